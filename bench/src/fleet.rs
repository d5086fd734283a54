//! Fleet mode's set-up for the benches: one real etcd member on loopback, the Envoy cluster
//! that reaches it (HTTP/2, as README's "Fleet mode" says), the plugin's `fleet` block, and
//! readers for the figures the fleet benches compare (the filter's fleet stats, Envoy's
//! histograms, etcd's own gRPC counters).

use std::collections::BTreeMap;
use std::time::Duration;

use school_system::client;
use school_system::etcd::{Etcd, Options};
use school_system::stack::poll;

type Result<T> = std::result::Result<T, String>;

/// Every bench fleet's keys live under this prefix.
pub const PREFIX: &str = "/ecb-bench/fleet";

/// One etcd member on free loopback ports, stopped when dropped.
pub fn start_etcd() -> Result<Etcd> {
    Etcd::start(&Options {
        members: 1,
        ..Options::default()
    })
}

/// `127.0.0.1:port` of the etcd member's client (gRPC and `/metrics`) listener.
pub fn etcd_addr(etcd: &Etcd) -> String {
    format!("127.0.0.1:{}", etcd.members[0].client_port)
}

/// The `etcd` cluster, indented as an entry of `static_resources.clusters`.
pub fn etcd_cluster(port: u16) -> String {
    format!(
        r#"  - name: etcd
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    outlier_detection:
      split_external_local_origin_errors: true
      consecutive_local_origin_failure: 1
      max_ejection_percent: 100
    load_assignment:
      cluster_name: etcd
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}

/// The plugin JSON's `fleet` member (to go inside the top-level object), with the default
/// `trip_quorum`.
pub fn fleet_block() -> String {
    format!(r#""fleet": {{"etcd_cluster": "etcd", "prefix": "{PREFIX}", "timeout": "500ms"}}"#)
}

/// [`fleet_block`] with `trip_quorum` set.
pub fn fleet_block_with(trip_quorum: u32) -> String {
    format!(
        r#""fleet": {{"etcd_cluster": "etcd", "prefix": "{PREFIX}", "timeout": "500ms", "trip_quorum": {trip_quorum}}}"#
    )
}

/// A sample with no labels in Envoy's Prometheus text (`name{} 1` or `name 1`).
pub fn unlabelled(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        if !rest.starts_with(' ') {
            return None;
        }
        rest.trim().parse().ok()
    })
}

/// A metric's samples summed by the value of one label (etcd's `grpc_method`, say).
pub fn by_label(text: &str, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{metric}{{");
    let key = format!("{label}=\"");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = labels
            .split_once(&key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(v, _)| v);
        *out.entry(name.to_string()).or_insert(0.0) += value;
    }
    out
}

/// etcd's Prometheus page.
pub fn etcd_metrics(addr: &str) -> Result<String> {
    let r = client::get(addr, "/metrics").map_err(|e| format!("etcd /metrics: {e}"))?;
    if r.status == 200 {
        Ok(r.text())
    } else {
        Err(format!("etcd /metrics answered {}", r.status))
    }
}

/// Waits until the Envoy whose admin listener is `admin` says its fleet link is up.
pub fn wait_connected(admin: &str, timeout: Duration) -> Result<()> {
    poll(timeout, || {
        let text = client::get(admin, "/stats/prometheus").ok()?.text();
        (unlabelled(&text, "circuit_breaker_fleet_connected") == Some(1.0)).then_some(())
    })
    .ok_or_else(|| format!("the fleet link of the Envoy at {admin} did not come up"))
}

/// The fleet gauge and counters of one Envoy, from its Prometheus page.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetStats {
    pub connected: f64,
    pub published: f64,
    pub adopted: f64,
    pub publish_failures: f64,
    /// The propagation histogram's sample count and sum (ms).
    pub propagation_count: f64,
    pub propagation_sum: f64,
}

impl FleetStats {
    pub fn read(admin: &str) -> Result<FleetStats> {
        let text = client::get(admin, "/stats/prometheus")
            .map_err(|e| e.to_string())?
            .text();
        let of = |name: &str| unlabelled(&text, name).unwrap_or(f64::NAN);
        Ok(FleetStats {
            connected: of("circuit_breaker_fleet_connected"),
            published: of("circuit_breaker_fleet_published_total"),
            adopted: of("circuit_breaker_fleet_adopted_total"),
            publish_failures: of("circuit_breaker_fleet_publish_failures_total"),
            propagation_count: of("circuit_breaker_fleet_propagation_ms_count"),
            propagation_sum: of("circuit_breaker_fleet_propagation_ms_sum"),
        })
    }
}

/// Envoy's own quantiles of one histogram since start (`cumulative`, interpolated within
/// its buckets), from the admin's JSON stats: (quantile, value) pairs; empty while the
/// histogram has no sample or Envoy has not merged it yet (it merges on its stats flush).
pub fn cumulative_quantiles(admin: &str, histogram: &str) -> Result<Vec<(f64, f64)>> {
    // Custom stats are named `wasmcustom.<name>` inside Envoy.
    let path = format!("/stats?format=json&filter=[.]{histogram}$");
    let text = client::get(admin, &path).map_err(|e| e.to_string())?.text();
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for stat in v["stats"].as_array().into_iter().flatten() {
        let h = &stat["histograms"];
        let supported: Vec<f64> = h["supported_quantiles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        for q in h["computed_quantiles"].as_array().into_iter().flatten() {
            let values = q["values"].as_array().into_iter().flatten();
            for (p, value) in supported.iter().zip(values) {
                if let Some(c) = value["cumulative"].as_f64() {
                    out.push((p / 100.0, c));
                }
            }
        }
    }
    Ok(out)
}

/// Envoy's `/memory`: bytes allocated by its allocator and its heap size.
pub fn envoy_memory(admin: &str) -> Result<(u64, u64)> {
    let text = client::get(admin, "/memory")
        .map_err(|e| e.to_string())?
        .text();
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        v[name]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v[name].as_u64())
            .unwrap_or(0)
    };
    Ok((field("allocated"), field("heap_size")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_and_without_empty_labels() {
        let text = "circuit_breaker_fleet_connected{} 1\ncircuit_breaker_fleet_connected_x{} 7\n";
        assert_eq!(
            unlabelled(text, "circuit_breaker_fleet_connected"),
            Some(1.0)
        );
        assert_eq!(unlabelled("a_total 3\n", "a_total"), Some(3.0));
        assert_eq!(unlabelled("a_total_b 3\n", "a_total"), None);
    }

    #[test]
    fn etcd_counters_add_up_by_method() {
        let text = "grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 4\n\
                    grpc_server_msg_received_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 10\n\
                    grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"x\",grpc_type=\"unary\"} 1\n";
        let m = by_label(text, "grpc_server_msg_received_total", "grpc_method");
        assert_eq!(m.get("Range"), Some(&5.0));
        assert_eq!(m.get("Watch"), Some(&10.0));
    }
}
