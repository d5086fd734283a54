//! The protections compared, each as one Envoy configuration: nothing, Envoy's own tools
//! (outlier detection, `admission_control`, a retry budget) and the breaker with its
//! built-in defaults, with the sample config's settings, beside outlier detection, and (when
//! asked) with its own health probe. All
//! share the retry policy a mesh gives routes (5xx, reset and connect failures retried
//! twice, 100 ms a try) with `max_retries` lifted as Istio lifts it, so a retry storm shows.

use std::path::Path;

use crate::envoy::{bootstrap, wasm_filter, Listener};

/// Every variant, in the order of the tables.
pub const ALL: [&str; 7] = [
    "none",
    "outlier",
    "admission",
    "retry_budget",
    "breaker_defaults",
    "breaker_sample",
    "breaker_outlier",
];

/// Variants a run plays only when asked (`--variants`): the breaker with its own health
/// probe, so recovery needs no user to go first.
pub const EXTRA: [&str; 1] = ["breaker_probe"];

/// The breaker's defaults with a probe of `/` every 500 ms while half-open.
const PROBE: &str =
    r#"{"default": {"probe": {"path": "/", "interval": "500ms", "timeout": "250ms"}}}"#;

/// The sample config's settings for its `school` cluster (envoy/envoy.yaml).
const SAMPLE: &str = r#"{"default": {"failure_threshold": 5, "failure_rate_threshold": 0.5, "minimum_requests": 20, "trip_min_hosts": 2, "window": "10s", "open_duration": "60s", "half_open_max_requests": 1, "success_threshold": 1}}"#;

/// Outlier detection as the notes found it useful: 5 consecutive 5xx eject a host, at most
/// half the hosts ejected (all of them would send Envoy into panic routing).
const OUTLIER: &str = "    outlier_detection: { consecutive_5xx: 5, interval: 1s, base_ejection_time: 5s, max_ejection_percent: 50 }\n";

/// Envoy's `admission_control` filter, client-side throttling after the SRE book.
const ADMISSION: &str = r#"          - name: envoy.filters.http.admission_control
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl
              enabled: { default_value: true, runtime_key: ac.enabled }
              sampling_window: 10s
              sr_threshold: { default_value: { value: 95.0 }, runtime_key: ac.sr }
              aggression: { default_value: 1.0, runtime_key: ac.aggression }
              success_criteria:
                http_criteria:
                  http_success_status: [{ start: 100, end: 500 }]
"#;

/// How the cluster spreads requests over its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    RoundRobin,
    LeastRequest,
}

/// The Envoy bootstrap of `variant`: a gateway on `port` to the hosts on `hosts`.
pub fn yaml(
    variant: &str,
    port: u16,
    hosts: &[u16],
    lb: Balancing,
    retries: bool,
    wasm: &Path,
) -> String {
    let breaker =
        |json: &str| wasm_filter("circuit_breaker", &wasm.display().to_string(), json, &[]);
    let filters = match variant {
        "admission" => ADMISSION.to_string(),
        "breaker_defaults" | "breaker_outlier" => breaker("{}"),
        "breaker_sample" => breaker(SAMPLE),
        "breaker_probe" => breaker(PROBE),
        _ => String::new(),
    };
    let listener = Listener {
        name: "gateway",
        port,
        stat_prefix: "gateway",
        routes: route(retries),
        filters,
    };
    bootstrap(None, &[listener], &cluster(variant, hosts, lb))
}

/// The one route, with the mesh's retry policy (or none).
fn route(retries: bool) -> String {
    let policy = if retries {
        r#", retry_policy: { retry_on: "5xx,reset,connect-failure", num_retries: 2, per_try_timeout: 0.1s }"#
    } else {
        ""
    };
    format!(
        "              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: service, timeout: 1s{policy} }}\n"
    )
}

/// The `service` cluster of `hosts`, with the variant's outlier detection or retry budget.
fn cluster(variant: &str, hosts: &[u16], lb: Balancing) -> String {
    let lb = match lb {
        Balancing::RoundRobin => "ROUND_ROBIN",
        Balancing::LeastRequest => "LEAST_REQUEST",
    };
    let limit = if variant == "retry_budget" {
        "retry_budget: { budget_percent: { value: 20.0 }, min_retry_concurrency: 3 }"
    } else {
        "max_retries: 1000000"
    };
    let mut yaml = format!(
        "  - name: service\n    type: STATIC\n    connect_timeout: 0.25s\n    lb_policy: {lb}\n    \
         circuit_breakers: {{ thresholds: [{{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000, {limit} }}] }}\n"
    );
    if variant == "outlier" || variant == "breaker_outlier" {
        yaml.push_str(OUTLIER);
    }
    yaml.push_str("    load_assignment:\n      cluster_name: service\n      endpoints:\n      - lb_endpoints:\n");
    for port in hosts {
        yaml.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        ));
    }
    yaml
}
