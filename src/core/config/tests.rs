//! The plugin JSON: what is accepted, what each field becomes, and how refusals read.

use super::*;
use crate::core::duration::Millis;
use crate::core::settings::Mode;
use crate::core::window::WindowSpec;

fn parse(json: &str) -> Result<PluginConfig, ConfigError> {
    PluginConfig::parse(json.as_bytes())
}

fn refusal(json: &str) -> String {
    parse(json).unwrap_err().to_string()
}

const ISSUE_EXAMPLE: &str = r#"{
  "default": {
    "failure_threshold": 5, "failure_rate_threshold": 0.5, "minimum_requests": 20,
    "window": "10s", "open_duration": "60s", "half_open_max_requests": 1,
    "success_threshold": 1
  },
  "clusters": {
    "auth":    { "failure_threshold": 5, "open_duration": "60s" },
    "student": { "failure_threshold": 3, "open_duration": "30s",
                 "half_open_max_requests": 2, "success_threshold": 2 }
  }
}"#;

#[test]
fn clusters_override_the_default_field_by_field() {
    let config = parse(ISSUE_EXAMPLE).unwrap();
    let student = config.settings_for("student");
    assert_eq!(student.failure_threshold, 3);
    assert_eq!(student.open_duration_ms, 30_000);
    assert_eq!(student.half_open_max_requests, 2);
    assert_eq!(student.success_threshold, 2);
    assert_eq!(
        student.window,
        WindowSpec::Time { window_ms: 10_000 },
        "inherited"
    );
    assert_eq!(student.minimum_requests, 20, "inherited from default");
}

#[test]
fn unnamed_clusters_use_the_default_block() {
    let config = parse(r#"{"default": {"failure_threshold": 9}}"#).unwrap();
    assert_eq!(config.settings_for("anything").failure_threshold, 9);
    assert_eq!(config.settings_for("anything").open_duration_ms, 5_000);
}

#[test]
fn an_empty_configuration_means_all_defaults() {
    assert_eq!(parse("").unwrap().default, Settings::default());
    assert_eq!(parse("  {} ").unwrap().default, Settings::default());
}

#[test]
fn every_new_field_reaches_the_settings() {
    let config = parse(
        r#"{"default": {
            "slow_call_duration": "750ms", "slow_call_rate_threshold": 0.4,
            "window_type": "count", "window_size": 50,
            "backoff_multiplier": 2, "max_open_duration": "5m", "jitter": 0.1, "trip_min_hosts": 3,
            "half_open_max_duration": "20s", "recovery_duration": "30s",
            "honor_retry_after": true,
            "failure_status": ["5xx", 429], "ignore_status": ["501-502"],
            "count_connect_failures": false, "count_resets": false, "count_timeouts": false,
            "grpc_failure_codes": ["UNAVAILABLE", 13, "resource_exhausted"],
            "mode": "dry_run", "exclude_paths": ["/health"],
            "per_route": true, "max_route_breakers": 4,
            "fallback": {"status": 200, "body": "{cluster} later", "headers": {"X-Mode": "degraded"}},
            "fallback_cache": {"max_entries": 10, "max_bytes": 5000, "max_age": "1m"}
        }}"#,
    )
    .unwrap();
    let s = config.default;
    assert_eq!(s.slow_call_duration_ms, 750);
    assert_eq!(s.slow_call_rate_threshold, 0.4);
    assert_eq!(s.window, WindowSpec::Count { size: 50 });
    assert_eq!(s.trip_min_hosts, 3);
    assert_eq!(
        (s.backoff_multiplier, s.max_open_duration_ms, s.jitter),
        (2.0, 300_000, 0.1)
    );
    assert_eq!(
        (s.half_open_max_duration_ms, s.recovery_duration_ms),
        (20_000, 30_000)
    );
    assert!(s.honor_retry_after);
    assert!(s.classifier.failure_status.contains(429));
    assert!(s.classifier.failure_status.contains(503));
    assert!(s.classifier.ignore_status.contains(502));
    assert!(!s.classifier.connect_failures && !s.classifier.resets && !s.classifier.timeouts);
    assert_eq!(
        s.classifier.grpc_failure_codes,
        (1 << 14) | (1 << 13) | (1 << 8)
    );
    assert_eq!(s.mode, Mode::DryRun);
    assert_eq!(s.exclude_paths, ["/health"]);
    assert_eq!(s.max_route_breakers, Some(4));
    let fallback = s.fallback.unwrap();
    assert_eq!(fallback.status, 200);
    assert_eq!(fallback.headers[0].0, "x-mode");
    let cache = s.cache.unwrap();
    assert_eq!(
        (cache.max_entries, cache.max_bytes, cache.max_age_ms),
        (10, 5000, 60_000)
    );
}

#[test]
fn the_open_time_cap_follows_a_long_open_duration() {
    let config = parse(r#"{"clusters": {"slow": {"open_duration": "20m"}}}"#).unwrap();
    assert_eq!(config.settings_for("slow").max_open_duration_ms, 1_200_000);
    assert_eq!(config.default.max_open_duration_ms, 60_000);
    let msg = refusal(r#"{"default": {"open_duration": "5m", "max_open_duration": "1m"}}"#);
    assert!(
        msg.contains("default.max_open_duration: must not be shorter than open_duration (300s)"),
        "{msg}"
    );
}

#[test]
fn an_inherited_value_is_blamed_on_the_block_that_set_it() {
    let msg = refusal(
        r#"{"default": {"max_open_duration": "1m"}, "clusters": {"auth": {"open_duration": "2m"}}}"#,
    );
    assert!(msg.contains("default.max_open_duration"), "{msg}");
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let msg = refusal(r#"{"clusters": {"auth": {"failure_treshold": 3}}}"#);
    assert!(msg.contains("clusters.auth"), "{msg}");
    assert!(msg.contains("failure_treshold"), "{msg}");
    let msg = refusal(r#"{"defaults": {}}"#);
    assert!(msg.contains("unknown field `defaults`"), "{msg}");
    let msg = refusal(r#"{"default": {"fallback": {"stauts": 200}}}"#);
    assert!(msg.contains("default.fallback"), "{msg}");
}

#[test]
fn wrong_types_are_refused_with_their_path() {
    let msg = refusal(r#"{"default": {"failure_threshold": "5"}}"#);
    assert!(msg.contains("default.failure_threshold"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
    let msg = refusal(r#"{"default": {"minimum_requests": -1}}"#);
    assert!(msg.contains("default.minimum_requests"), "{msg}");
    let msg = refusal(r#"{"default": {"mode": "panic"}}"#);
    assert!(
        msg.contains("default.mode") && msg.contains("unknown variant `panic`"),
        "{msg}"
    );
    let msg = refusal(r#"{"default": {"window_type": "sliding"}}"#);
    assert!(msg.contains("default.window_type"), "{msg}");
}

#[test]
fn out_of_range_values_name_the_rule_and_the_value() {
    assert_eq!(
        refusal(r#"{"clusters": {"student": {"success_threshold": 0}}}"#),
        "invalid plugin configuration: clusters.student.success_threshold: \
         must be between 1 and 10000, but was 0"
    );
    for (json, expected) in [
        (
            r#"{"default": {"failure_rate_threshold": 1.5}}"#,
            "failure_rate_threshold: must be between 0 and 1, but was 1.5",
        ),
        (
            r#"{"default": {"jitter": 0.9}}"#,
            "jitter: must be between 0 and 0.5, but was 0.9",
        ),
        (
            r#"{"default": {"backoff_multiplier": 0.5}}"#,
            "backoff_multiplier: must be between 1 and 10, but was 0.5",
        ),
        (
            r#"{"default": {"window_type": "count", "window_size": 5000}}"#,
            "window_size: must be between 1 and 1000",
        ),
        (
            r#"{"default": {"half_open_max_duration": "50ms"}}"#,
            "must be \"0s\" (off) or at least 100ms",
        ),
        (
            r#"{"default": {"per_route": true, "max_route_breakers": 0}}"#,
            "max_route_breakers: must be between 1 and 256",
        ),
        (
            r#"{"default": {"failure_status": ["6xx"]}}"#,
            "failure_status: items must be status codes",
        ),
        (
            r#"{"default": {"ignore_status": [700]}}"#,
            "ignore_status: items must be status codes",
        ),
        (
            r#"{"default": {"grpc_failure_codes": ["UNAVAILBLE"]}}"#,
            "grpc_failure_codes: items must be gRPC status codes",
        ),
        (
            r#"{"default": {"grpc_failure_codes": [0]}}"#,
            "but one was 0",
        ),
        (
            r#"{"default": {"exclude_paths": ["health"]}}"#,
            "exclude_paths: items must be path prefixes",
        ),
        (
            r#"{"default": {"fallback": {"status": 99}}}"#,
            "fallback: status must be between 200 and 599",
        ),
        (
            r#"{"default": {"fallback": {"headers": {"content-length": "1"}}}}"#,
            "is not a header Envoy lets a filter set",
        ),
        (
            r#"{"default": {"fallback": {"headers": {"x-a": "b\r\nc"}}}}"#,
            "holds a control character",
        ),
        (
            r#"{"default": {"fallback_cache": {"max_entries": 0}}}"#,
            "fallback_cache: max_entries must be between 1 and 10000",
        ),
        (
            r#"{"default": {"fallback_cache": {"max_age": "10ms"}}}"#,
            "fallback_cache: max_age must be between 1s and 24h",
        ),
    ] {
        let msg = refusal(json);
        assert!(msg.contains(expected), "{json}: {msg}");
    }
}

#[test]
fn malformed_durations_are_refused_with_the_text_given() {
    let msg = refusal(r#"{"default": {"open_duration": "60 seconds"}}"#);
    assert!(msg.contains("default.open_duration"), "{msg}");
    assert!(msg.contains("\"60 seconds\""), "{msg}");
    let msg = refusal(r#"{"default": {"window": "5ms"}}"#);
    assert!(msg.contains("between 100ms and 1h"), "{msg}");
}

#[test]
fn malformed_json_is_refused() {
    let msg = refusal(r#"{"default": {"failure_threshold": 5"#);
    assert!(msg.starts_with("invalid plugin configuration"), "{msg}");
    let msg = refusal(r#"{} trailing"#);
    assert!(msg.contains("trailing"), "{msg}");
}

#[test]
fn a_bad_cluster_refuses_the_whole_document() {
    let msg = refusal(
        r#"{"clusters": {"auth": {"failure_threshold": 2}, "school": {"open_duration": "x"}}}"#,
    );
    assert!(msg.contains("clusters.school.open_duration"), "{msg}");
}

#[test]
fn rules_can_be_switched_off_with_zero() {
    let config =
        parse(r#"{"default": {"failure_threshold": 0, "failure_rate_threshold": 0}}"#).unwrap();
    assert_eq!(config.default.failure_threshold, 0);
    assert_eq!(config.default.failure_rate_threshold, 0.0);
}

#[test]
fn per_route_is_off_unless_asked_for() {
    let config = parse(r#"{"default": {"max_route_breakers": 8}}"#).unwrap();
    assert_eq!(config.default.max_route_breakers, None);
}

#[test]
fn an_events_webhook_is_checked() {
    let c =
        parse(r#"{"events": {"cluster": "sink", "path": "/events", "timeout": "2s"}}"#).unwrap();
    assert_eq!(
        c.events,
        Some(EventsTarget {
            cluster: "sink".into(),
            path: "/events".into(),
            timeout_ms: 2_000
        })
    );
    assert_eq!(parse("{}").unwrap().events, None);
    let msg = refusal(r#"{"events": {"cluster": "sink", "path": "events"}}"#);
    assert!(msg.contains("events.path: must be a path"), "{msg}");
    let msg = refusal(r#"{"events": {"cluster": "", "path": "/e"}}"#);
    assert!(msg.contains("events.cluster"), "{msg}");
    let msg = refusal(r#"{"events": {"cluster": "s", "path": "/e", "timeout": "2m"}}"#);
    assert!(
        msg.contains("events.timeout: must be between 1ms and 60s"),
        "{msg}"
    );
    let msg = refusal(r#"{"events": {"cluster": "s", "path": "/e", "url": "x"}}"#);
    assert!(msg.contains("unknown field `url`"), "{msg}");
}

/// The JSON Schema editors use is generated from these types; `make schema` rewrites it.
#[test]
fn the_committed_json_schema_matches_the_rust_types() {
    let mut schema = schemars::schema_for!(PluginConfigDoc);
    schema.insert("$id".into(), "https://github.com/envoy-circuit-breaker/envoy-circuit-breaker/schema/plugin-config.schema.json".into());
    schema.insert(
        "title".into(),
        "envoy-circuit-breaker plugin configuration".into(),
    );
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema/plugin-config.schema.json"
        );
        std::fs::write(path, &text).unwrap();
    }
    assert!(
        text == include_str!("../../../schema/plugin-config.schema.json"),
        "schema/plugin-config.schema.json is out of date: run `make schema`"
    );
}

/// A number as the docs write it: `0.5`, `10000`, `0` (never `0.0`).
fn shown(n: &serde_json::Value) -> String {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        Some(f) => format!("{f}"),
        None => n.to_string(),
    }
}

/// A plugin JSON that sets `field` of the block `def` to `value`, with whatever else the
/// field needs to be read at all.
fn setting(def: &str, field: &str, value: serde_json::Value) -> String {
    let mut block = serde_json::json!({});
    match field {
        "window_size" => block["window_type"] = "count".into(),
        "max_route_breakers" => block["per_route"] = true.into(),
        _ => {}
    }
    match def {
        "SettingsDoc" => block[field] = value,
        "FallbackDoc" => block["fallback"] = serde_json::json!({ field: value }),
        _ => block["fallback_cache"] = serde_json::json!({ field: value }),
    }
    serde_json::json!({ "clusters": { "c": block } }).to_string()
}

/// The schema editors check against and the parser Envoy runs must agree on every bound:
/// each one in the generated schema is tried just inside (accepted) and just outside
/// (refused), and the documentation of the field states it.
#[test]
fn every_bound_in_the_schema_is_the_bound_the_parser_enforces() {
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfigDoc)).unwrap();
    let mut checked = 0;
    for def in ["SettingsDoc", "FallbackDoc", "CacheDoc"] {
        let props = schema["$defs"][def]["properties"].as_object().unwrap();
        for (field, p) in props {
            let (Some(min), Some(max)) = (p.get("minimum"), p.get("maximum")) else {
                continue;
            };
            let integer = p["type"][0] == "integer";
            let step = if integer { 1.0 } else { 0.001 };
            let value = |x: f64| {
                if integer {
                    serde_json::json!(x as i64)
                } else {
                    serde_json::json!(x)
                }
            };
            let (lo, hi) = (min.as_f64().unwrap(), max.as_f64().unwrap());
            for inside in [lo, hi] {
                let json = setting(def, field, value(inside));
                assert!(parse(&json).is_ok(), "{json} refused: {}", refusal(&json));
            }
            for outside in [lo - step, hi + step] {
                let json = setting(def, field, value(outside));
                assert!(parse(&json).is_err(), "{json} accepted");
            }
            let doc = p["description"].as_str().unwrap_or("");
            let stated = format!("{} to {}", shown(min), shown(max));
            assert!(
                doc.contains(&stated),
                "{def}.{field}: {doc:?} does not say {stated:?}"
            );
            checked += 1;
        }
        for (field, p) in props {
            let Some(max) = p.get("maxItems").or(p.get("maxLength")) else {
                continue;
            };
            let n = max.as_u64().unwrap() as usize;
            let long = |n: usize| match field.as_str() {
                "exclude_paths" => serde_json::json!(vec!["/x"; n]),
                _ => serde_json::json!("x".repeat(n)),
            };
            assert!(
                parse(&setting(def, field, long(n))).is_ok(),
                "{def}.{field} at {n}"
            );
            assert!(
                parse(&setting(def, field, long(n + 1))).is_err(),
                "{def}.{field} past {n}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16, "bounds found in the schema");
}

/// Durations are strings in the schema, so their bounds live in the limits alone: each is
/// tried just inside and just outside, and the field's documentation states it.
#[test]
fn every_duration_bound_is_enforced_and_documented() {
    use crate::core::limits as l;
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfigDoc)).unwrap();
    let fields = [
        ("slow_call_duration", l::SLOW_CALL_DURATION_MS),
        ("window", l::WINDOW_MS),
        ("open_duration", l::OPEN_DURATION_MS),
        ("max_open_duration", l::MAX_OPEN_DURATION_MS),
        ("half_open_max_duration", l::HALF_OPEN_MAX_DURATION_MS),
        ("recovery_duration", l::RECOVERY_DURATION_MS),
    ];
    for (field, limit) in fields {
        // A long open time would be refused by max_open_duration's own rule, not this one.
        let with = |ms: u64| {
            let mut block = serde_json::json!({ field: format!("{ms}ms") });
            if field == "max_open_duration" {
                block["open_duration"] = "10ms".into();
            }
            serde_json::json!({ "default": block }).to_string()
        };
        assert!(parse(&with(limit.min)).is_ok(), "{field} at its minimum");
        assert!(parse(&with(limit.max)).is_ok(), "{field} at its maximum");
        assert!(
            parse(&with(limit.max + 1)).is_err(),
            "{field} past its maximum"
        );
        if limit.min > 0 {
            assert!(
                parse(&with(limit.min - 1)).is_err(),
                "{field} under its minimum"
            );
        }
        let doc = schema["$defs"]["SettingsDoc"]["properties"][field]["description"]
            .as_str()
            .unwrap_or("");
        let stated = format!("\"{}\"", Millis(limit.max));
        assert!(
            doc.contains(&stated),
            "{field}: {doc:?} does not say {stated}"
        );
    }
}

#[test]
fn without_a_fleet_block_there_is_no_fleet() {
    let c = parse("{}").unwrap();
    assert_eq!(c.fleet, None);
    assert!(
        c.default.fleet,
        "breakers join a fleet by default once there is one"
    );
}

#[test]
fn a_fleet_block_is_checked_and_compiled() {
    let c = parse(
        r#"{"fleet": {"etcd_cluster": "etcd", "prefix": "/ecb/school", "timeout": "250ms", "member": "gateway-2"},
            "clusters": {"auth": {"fleet": false}}}"#,
    )
    .unwrap();
    let fleet = c.fleet.unwrap();
    assert_eq!(fleet.prefix, "/ecb/school");
    assert_eq!(fleet.timeout_ms, 250);
    assert_eq!(fleet.member.as_deref(), Some("gateway-2"));
    assert!(!c.clusters["auth"].fleet);
    assert!(c.default.fleet);
}

#[test]
fn fleet_refusals_name_the_field() {
    let msg = refusal(r#"{"fleet": {"etcd_cluster": "etcd", "prefix": "/p", "timeout": "0ms"}}"#);
    assert!(
        msg.contains("fleet.timeout: must be between 1ms and 60s, but was \"0ms\""),
        "{msg}"
    );
    let msg = refusal(r#"{"fleet": {"etcd_cluster": "etcd", "prefix": "p"}}"#);
    assert!(msg.contains("fleet.prefix: must start"), "{msg}");
    let msg = refusal(r#"{"fleet": {"etcd_cluster": "etcd", "prefix": "/p", "tls": true}}"#);
    assert!(
        msg.contains("fleet") && msg.contains("unknown field `tls`"),
        "{msg}"
    );
    let msg = refusal(r#"{"fleet": {"prefix": "/p"}}"#);
    assert!(msg.contains("missing field `etcd_cluster`"), "{msg}");
    let msg = refusal(r#"{"clusters": {"auth": {"fleet": "no"}}}"#);
    assert!(msg.contains("clusters.auth.fleet"), "{msg}");
}

#[test]
fn trip_min_hosts_defaults_to_two_and_one_keeps_any_host_enough() {
    assert_eq!(parse("{}").unwrap().default.trip_min_hosts, 2);
    let config =
        parse(r#"{"default": {"trip_min_hosts": 3}, "clusters": {"one": {"trip_min_hosts": 1}}}"#)
            .unwrap();
    assert_eq!(config.settings_for("other").trip_min_hosts, 3);
    assert_eq!(config.settings_for("one").trip_min_hosts, 1);
}

#[test]
fn bad_trip_min_hosts_are_refused_naming_the_field() {
    for (json, expected) in [
        (
            r#"{"clusters": {"school": {"trip_min_hosts": 0}}}"#,
            "invalid plugin configuration: clusters.school.trip_min_hosts: must be between 1 and 1000, but was 0",
        ),
        (
            r#"{"default": {"trip_min_hosts": 1001}}"#,
            "invalid plugin configuration: default.trip_min_hosts: must be between 1 and 1000, but was 1001",
        ),
    ] {
        assert_eq!(refusal(json), expected);
    }
    for json in [
        r#"{"clusters": {"school": {"trip_min_hosts": -1}}}"#,
        r#"{"clusters": {"school": {"trip_min_hosts": "two"}}}"#,
        r#"{"clusters": {"school": {"trip_min_hosts": 2.5}}}"#,
    ] {
        let msg = refusal(json);
        assert!(msg.contains("clusters.school"), "{json}: {msg}");
    }
    let msg = refusal(r#"{"clusters": {"school": {"trip_min_hosts": -1}}}"#);
    assert!(
        msg.contains("clusters.school.trip_min_hosts: invalid value: integer `-1`"),
        "{msg}"
    );
    let msg = refusal(r#"{"clusters": {"school": {"trip_min_hosts": "two"}}}"#);
    assert!(
        msg.contains("clusters.school.trip_min_hosts: invalid type: string \"two\""),
        "{msg}"
    );
    let msg = refusal(r#"{"default": {"trip_min_hosts": 4294967296}}"#);
    assert!(msg.contains("default.trip_min_hosts"), "{msg}");
}

/// The fleet block's bounds come from the limits too: each is tried just inside and just
/// outside, an unset duration takes its default, and the field's documentation (which the
/// schema carries) states the bound.
#[test]
fn every_fleet_bound_is_enforced_and_documented() {
    use crate::core::duration::parse_millis;
    use crate::core::limits as l;
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfigDoc)).unwrap();
    let doc_of = |field: &str| {
        schema["$defs"]["FleetDoc"]["properties"][field]["description"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let with = |field: &str, value: &str| {
        let mut fleet = serde_json::json!({ "etcd_cluster": "etcd", "prefix": "/p" });
        fleet[field] = value.into();
        parse(&serde_json::json!({ "fleet": fleet }).to_string())
    };
    for (field, limit) in [
        ("timeout", l::FLEET_TIMEOUT_MS),
        ("lease_ttl", l::FLEET_LEASE_TTL_MS),
    ] {
        let ms = |ms: u64| format!("{ms}ms");
        assert!(
            with(field, &ms(limit.min)).is_ok(),
            "{field} at its minimum"
        );
        assert!(
            with(field, &ms(limit.max)).is_ok(),
            "{field} at its maximum"
        );
        assert!(with(field, &ms(limit.min - 1)).is_err(), "{field} under");
        assert!(with(field, &ms(limit.max + 1)).is_err(), "{field} over");
        // Every quoted duration in the text, such as "2s" or "5m".
        let doc = doc_of(field);
        let stated: Vec<u64> = doc
            .split('"')
            .skip(1)
            .step_by(2)
            .filter_map(|t| parse_millis(t).ok())
            .collect();
        for v in [limit.min, limit.max, limit.default] {
            assert!(stated.contains(&v), "{field}: {doc:?} does not state {v}ms");
        }
    }
    let c = parse(r#"{"fleet": {"etcd_cluster": "etcd", "prefix": "/p"}}"#).unwrap();
    let fleet = c.fleet.unwrap();
    assert_eq!(fleet.timeout_ms, l::FLEET_TIMEOUT_MS.default);
    assert_eq!(fleet.lease_ttl_ms, l::FLEET_LEASE_TTL_MS.default);
    for (field, max, long) in [
        ("etcd_cluster", l::MAX_ETCD_CLUSTER_BYTES, "e".repeat(200)),
        (
            "prefix",
            l::MAX_FLEET_PREFIX_BYTES,
            format!("/{}", "p".repeat(300)),
        ),
        ("member", l::MAX_MEMBER_BYTES, "m".repeat(200)),
        ("username_env", l::MAX_ENV_NAME_BYTES, "U".repeat(200)),
    ] {
        let value = |n: usize| {
            let mut fleet = serde_json::json!({ "etcd_cluster": "etcd", "prefix": "/p" });
            fleet[field] = long[..n].into();
            if field == "username_env" {
                fleet["password_env"] = "P".into();
            }
            parse(&serde_json::json!({ "fleet": fleet }).to_string())
        };
        assert!(value(max).is_ok(), "{field} at {max}");
        assert!(value(max + 1).is_err(), "{field} past {max}");
        if field != "username_env" {
            let doc = doc_of(field);
            assert!(doc.contains(&max.to_string()), "{field}: {doc:?}");
        }
    }
}

/// Names and paths elsewhere in the document have their bounds in the limits as well.
#[test]
fn names_and_paths_are_bounded_by_the_limits() {
    use crate::core::limits as l;
    let name = |n: usize| format!(r#"{{"clusters": {{"{}": {{}}}}}}"#, "c".repeat(n));
    assert!(parse(&name(l::MAX_CLUSTER_NAME_BYTES)).is_ok());
    assert!(parse(&name(l::MAX_CLUSTER_NAME_BYTES + 1)).is_err());
    let events = |path: &str| {
        parse(&format!(
            r#"{{"events": {{"cluster": "{}", "path": "{path}"}}}}"#,
            "e".repeat(l::MAX_CLUSTER_NAME_BYTES)
        ))
    };
    let path = |n: usize| format!("/{}", "p".repeat(n - 1));
    assert!(events(&path(l::MAX_PATH_BYTES)).is_ok());
    assert!(events(&path(l::MAX_PATH_BYTES + 1)).is_err());
    let excluded = |n: usize| {
        parse(&format!(
            r#"{{"default": {{"exclude_paths": ["{}"]}}}}"#,
            path(n)
        ))
    };
    assert!(excluded(l::MAX_PATH_BYTES).is_ok());
    assert!(excluded(l::MAX_PATH_BYTES + 1).is_err());
}

/// `fleet.trip_quorum`: a whole number within its limit, refused otherwise by its path,
/// whatever the wrong value's type; its documentation states the bounds and the default.
#[test]
fn trip_quorum_refuses_anything_but_a_count_within_its_limit() {
    use crate::core::limits as l;
    let with = |q: &str| {
        parse(&format!(
            r#"{{"fleet": {{"etcd_cluster": "etcd", "prefix": "/p", "trip_quorum": {q}}}}}"#
        ))
    };
    let q = l::FLEET_TRIP_QUORUM;
    assert_eq!(
        with(&q.min.to_string()).unwrap().fleet.unwrap().trip_quorum,
        q.min
    );
    assert_eq!(
        with(&q.max.to_string()).unwrap().fleet.unwrap().trip_quorum,
        q.max
    );
    let unset = parse(r#"{"fleet": {"etcd_cluster": "etcd", "prefix": "/p"}}"#).unwrap();
    assert_eq!(unset.fleet.unwrap().trip_quorum, q.default);
    for bad in ["0", "-1", "\"2\"", "1001", "2.5", "true", "4294967296"] {
        let msg = with(bad)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(msg.contains("fleet.trip_quorum"), "{bad}: {msg:?}");
    }
    assert!(with("0")
        .unwrap_err()
        .to_string()
        .ends_with("must be between 1 and 1000, but was 0"));
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfigDoc)).unwrap();
    let doc = schema["$defs"]["FleetDoc"]["properties"]["trip_quorum"]["description"]
        .as_str()
        .unwrap_or("");
    for v in [q.min, q.max, q.default] {
        assert!(doc.contains(&v.to_string()), "{doc:?} does not state {v}");
    }
}
