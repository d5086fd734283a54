//! The observability examples: the Prometheus config and alert rules pass promtool, the
//! alerts fire when they should, and every metric the alerts and the Grafana dashboard
//! use is one the filter really publishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("examples/observability"))
        .output()
        .expect("promtool (make test installs prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_prometheus_config_and_rules_are_valid() {
    assert!(
        promtool(&["check", "config", "prometheus.yml"]).contains("SUCCESS: 1 rule files found")
    );
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS: 4 rules found"));
}

#[test]
fn the_alerts_fire_exactly_when_they_should() {
    assert!(promtool(&["test", "rules", "alerts_test.yml"]).contains("SUCCESS"));
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("circuit_breaker_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn every_metric_the_alerts_and_dashboard_use_exists() {
    let alerts = std::fs::read_to_string(root().join("examples/observability/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(root().join("examples/observability/grafana-dashboard.json"))
            .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() >= 8);
    let used: BTreeSet<String> = metric_names(&alerts)
        .union(&metric_names(&dashboard))
        .cloned()
        .collect();
    assert!(used.len() >= 10, "{used:?}");

    let stack = stack(None, 2);
    let published: BTreeSet<String> = stack
        .envoy
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("circuit_breaker_"))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = used.difference(&published).collect();
    assert!(missing.is_empty(), "used but not published: {missing:?}");
}
