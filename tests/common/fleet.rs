//! Fleet-mode helpers shared by the suites that run real Envoys against a real etcd: the
//! plugin JSON, the `etcd` cluster's YAML (plain or TLS, one member or three), a fleet of
//! Envoys in front of the sample services, and what they say through stats and the log.

use std::time::{Duration, Instant};

use school_system::etcd::Etcd;

use super::*;

pub const PREFIX: &str = "/ecb/fleet-test";

/// The fleet's plugin JSON with `trip_quorum` 1: any one Envoy's trip opens the breaker
/// everywhere, as fleet mode did before votes, which the suites written for it check.
pub fn plugin_json(open: &str) -> String {
    plugin_json_with(open, "")
}

/// The fleet's plugin JSON (`trip_quorum` 1) with `school` appended to the school
/// breaker's settings.
pub fn plugin_json_with(open: &str, school: &str) -> String {
    plugin_json_quorum(open, school, 1)
}

/// The fleet's plugin JSON with `school` appended to the school breaker's settings and
/// `fleet.trip_quorum` set to `quorum`.
pub fn plugin_json_quorum(open: &str, school: &str, quorum: u32) -> String {
    format!(
        r#"{{
  "default": {{ "failure_threshold": 5, "open_duration": "{open}" }},
  "clusters": {{ "school": {{ "failure_threshold": 5, "open_duration": "{open}"{school} }},
                 "auth": {{ "fleet": false }} }},
  "fleet": {{ "etcd_cluster": "etcd", "prefix": "{PREFIX}", "timeout": "500ms", "lease_ttl": "2s", "trip_quorum": {quorum} }}
}}"#
    )
}

/// The keys under `prefix` in etcd, read with etcdctl.
pub fn keys_under(etcd: &Etcd, prefix: &str) -> Vec<String> {
    etcd.ctl(&["get", "--prefix", "--keys-only", prefix])
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The client port of etcd member `i`.
pub fn etcd_port(etcd: &Etcd, i: usize) -> u16 {
    etcd.members[i].client_port
}

/// The etcd cluster as the fleet note says: HTTP/2, and outlier detection so a dead member
/// is ejected after one failure.
pub fn etcd_cluster(port: u16) -> String {
    etcd_cluster_at(&[port])
}

/// Like [`etcd_cluster`], with one endpoint per member, and with etcd's gRPC health
/// service checked every second as under Docker (`envoy/envoy.fleet.docker.yaml`), so a
/// member that does not answer stays out of the reconnects.
pub fn etcd_cluster_of_members(ports: &[u16]) -> String {
    etcd_cluster_at(ports).replace(
        "      max_ejection_percent: 100\n",
        "      max_ejection_percent: 100\n      base_ejection_time: 5s\n    health_checks:\n    - timeout: 0.5s\n      interval: 1s\n      no_traffic_interval: 1s\n      unhealthy_threshold: 1\n      healthy_threshold: 1\n      grpc_health_check: {}\n",
    )
}

/// Like [`etcd_cluster`], with one endpoint per member.
pub fn etcd_cluster_at(ports: &[u16]) -> String {
    let endpoints: String = ports
        .iter()
        .map(|p| {
            format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}\n")
        })
        .collect();
    let one = h2_cluster("etcd", ports[0]).replace(
        "    load_assignment:",
        "    outlier_detection:\n      split_external_local_origin_errors: true\n      consecutive_local_origin_failure: 1\n      max_ejection_percent: 100\n    load_assignment:",
    );
    let first = one
        .lines()
        .find(|l| l.contains("- endpoint:"))
        .map(|l| format!("{l}\n"))
        .unwrap();
    one.replace(&first, &endpoints)
}

/// Envoy's upstream TLS towards etcd: the CA that signed etcd's certificate, and a client
/// certificate and key when given.
pub fn with_upstream_tls(cluster: &str, ca: &str, client: Option<(&str, &str)>) -> String {
    let certificate = client
        .map(|(cert, key)| {
            format!(
                "          tls_certificates:\n          - certificate_chain: {{ filename: \"{cert}\" }}\n            private_key: {{ filename: \"{key}\" }}\n"
            )
        })
        .unwrap_or_default();
    cluster.replace(
        "    load_assignment:",
        &format!(
            "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [\"h2\"]
{certificate}          validation_context:
            trusted_ca: {{ filename: \"{ca}\" }}
    load_assignment:"
        ),
    )
}

/// Envoys in front of one sample stack, sharing breakers through `etcd`.
pub struct Fleet {
    pub etcd: Etcd,
    pub stack: Stack,
    pub others: Vec<Envoy>,
}

impl Fleet {
    pub fn envoys(&self) -> Vec<&Envoy> {
        std::iter::once(&self.stack.envoy)
            .chain(self.others.iter())
            .collect()
    }
}

/// A second Envoy like `first` (same services, same etcd), with its own ports and node id.
pub fn another(first: &Envoy, node: &str) -> Envoy {
    another_with_env(first, node, &[("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)])
}

pub fn another_with_env(first: &Envoy, node: &str, env: &[(&str, &str)]) -> Envoy {
    another_edited(first, node, env, |y| y)
}

/// Like [`another_with_env`], with a last `edit` of the YAML.
pub fn another_edited(
    first: &Envoy,
    node: &str,
    env: &[(&str, &str)],
    edit: impl FnOnce(String) -> String,
) -> Envoy {
    let yaml = std::fs::read_to_string(&first.config_path).unwrap();
    let mut yaml = yaml.replacen(
        "node: { id: gateway-1 }",
        &format!("node: {{ id: {node} }}"),
        1,
    );
    for listener in ["gateway", "control"] {
        if let Some(addr) = listener_of(&yaml, listener) {
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            yaml = with_port(&yaml, port, free_port().unwrap());
        }
    }
    Envoy::start_with_env(&edit(yaml), 2, env).unwrap_or_else(|e| panic!("{e}"))
}

/// Three Envoys of one fleet where gateway-1's `school` cluster points at a port nothing
/// listens on (its own broken path: a bad NIC, a zone cut off) while gateway-2's and
/// gateway-3's reach the healthy service under the same cluster name.
pub fn fleet_with_one_broken_path(json: &str) -> Fleet {
    let dead = free_port().unwrap();
    let mut school_port = 0;
    let etcd = Etcd::start(&school_system::etcd::Options {
        members: 1,
        ..Default::default()
    })
    .unwrap();
    let cluster = etcd_cluster(etcd_port(&etcd, 0));
    let token = [("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)];
    let stack = Stack::start_with_env(Some(json), 2, &token, |y| {
        school_port = listener_port(&y, "school");
        format!(
            "node: {{ id: gateway-1 }}\n{}",
            with_port(&add_clusters(&y, &cluster), school_port, dead)
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let others = (2..=3)
        .map(|n| {
            another_edited(&stack.envoy, &format!("gateway-{n}"), &token, |y| {
                with_port(&y, dead, school_port)
            })
        })
        .collect();
    let f = Fleet {
        etcd,
        stack,
        others,
    };
    for e in f.envoys() {
        wait_connected(e);
    }
    f
}

/// The port of the first endpoint of cluster `name` in `yaml`.
fn listener_port(yaml: &str, name: &str) -> u16 {
    let addr = listener_of(yaml, name).unwrap_or_else(|| panic!("no cluster {name}"));
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// One etcd member and `envoys` Envoys, each connected.
pub fn fleet(open: &str, envoys: usize) -> Fleet {
    fleet_with(&plugin_json(open), envoys)
}

pub fn fleet_with(json: &str, envoys: usize) -> Fleet {
    fleet_with_edit(json, envoys, |y| y)
}

/// As [`fleet_with`], with a last edit of the first Envoy's YAML (the others copy it).
pub fn fleet_with_edit(json: &str, envoys: usize, edit: impl FnOnce(String) -> String) -> Fleet {
    let etcd = Etcd::start(&school_system::etcd::Options {
        members: 1,
        ..Default::default()
    })
    .unwrap();
    let cluster = etcd_cluster(etcd_port(&etcd, 0));
    fleet_on_edited(etcd, json, envoys, &cluster, edit)
}

/// `envoys` Envoys (gateway-1 to gateway-N) reaching `etcd` through `cluster`, each
/// connected.
pub fn fleet_on(etcd: Etcd, json: &str, envoys: usize, cluster: &str) -> Fleet {
    fleet_on_edited(etcd, json, envoys, cluster, |y| y)
}

fn fleet_on_edited(
    etcd: Etcd,
    json: &str,
    envoys: usize,
    cluster: &str,
    edit: impl FnOnce(String) -> String,
) -> Fleet {
    let token = [("CIRCUIT_BREAKER_ADMIN_TOKEN", TOKEN)];
    let stack = Stack::start_with_env(Some(json), 2, &token, |y| {
        edit(format!(
            "node: {{ id: gateway-1 }}\n{}",
            add_clusters(&y, cluster)
        ))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let others = (2..=envoys)
        .map(|n| another(&stack.envoy, &format!("gateway-{n}")))
        .collect();
    let f = Fleet {
        etcd,
        stack,
        others,
    };
    for e in f.envoys() {
        wait_connected(e);
    }
    f
}

/// A stat without labels, as Envoy's Prometheus page shows it.
pub fn stat(e: &Envoy, name: &str) -> Option<f64> {
    e.prometheus().ok()?.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.trim().parse().ok()
    })
}

pub fn connected(e: &Envoy) -> bool {
    stat(e, "circuit_breaker_fleet_connected") == Some(1.0)
}

pub fn wait_connected(e: &Envoy) {
    wait_for("the fleet link", Duration::from_secs(10), || {
        connected(e).then_some(())
    });
}

/// Waits until `e` says its link is down; returns how long that took from `since`.
pub fn wait_disconnected(e: &Envoy, since: Instant, within: Duration) -> Duration {
    wait_for("the fleet link to go down", within, || {
        (stat(e, "circuit_breaker_fleet_connected") == Some(0.0)).then(|| since.elapsed())
    })
}

/// How long from `since` until each Envoy of `f` says its link is down.
pub fn all_disconnected(f: &Fleet, since: Instant, within: Duration) -> Vec<Duration> {
    f.envoys()
        .iter()
        .map(|e| wait_disconnected(e, since, within))
        .collect()
}

/// How long from `since` until each Envoy of `f` says its link is up.
pub fn all_connected(f: &Fleet, since: Instant, within: Duration) -> Vec<Duration> {
    f.envoys()
        .iter()
        .map(|e| {
            wait_for("the link back", within, || {
                connected(e).then(|| since.elapsed())
            })
        })
        .collect()
}

/// The school breaker's view through `e`'s control API.
pub fn school_view(e: &Envoy) -> Option<serde_json::Value> {
    api(e, "GET", "/circuit-breakers/school", None, None)
        .json()
        .ok()
}

pub fn state_everywhere(f: &Fleet, state: &str) {
    for e in f.envoys() {
        wait_for(
            &format!("{state} on every Envoy"),
            Duration::from_secs(5),
            || (school_view(e)?["state"] == state).then_some(()),
        );
    }
}
