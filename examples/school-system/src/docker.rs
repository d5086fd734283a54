//! The docker-compose stack's Envoy config, derived from the native sample so the two
//! cannot drift: listeners on all interfaces inside the container, upstreams by their
//! compose service names, and the `.wasm` next to the config in Envoy's working directory.
//! The fleet stack's config (`envoy/envoy.fleet.docker.yaml`) is derived from that one in turn.

/// The compose service name and port of each upstream in the sample.
pub const SERVICES: [(&str, u16); 3] = [
    ("auth-service", 8081),
    ("school-service", 8082),
    ("student-service", 8083),
];

/// Where the native sample loads the filter from (relative to the repository root).
const NATIVE_WASM: &str = "filename: target/wasm32-wasip1/release/envoy_circuit_breaker.wasm";
/// Where the container loads it from (relative to Envoy's working directory, `/etc/envoy`).
const DOCKER_WASM: &str = "filename: envoy_circuit_breaker.wasm";

/// The compose config for `native`, the text of `envoy/envoy.yaml`.
pub fn docker_config(native: &str) -> Result<String, String> {
    let mut out = String::from(
        "# GENERATED from envoy/envoy.yaml by `make docker-config`; do not edit by hand.\n\
         # The docker-compose stack's Envoy: the same listeners, routes, filter and plugin\n\
         # JSON, with upstreams reached by their compose service names.\n",
    );
    let mut body = native.to_string();
    for (name, port) in SERVICES {
        let from = format!("address: 127.0.0.1, port_value: {port} ");
        if !body.contains(&from) {
            return Err(format!("the sample has no upstream on 127.0.0.1:{port}"));
        }
        body = body.replace(&from, &format!("address: {name}, port_value: {port} "));
    }
    body = body.replace("address: 127.0.0.1,", "address: 0.0.0.0,");
    if !body.contains(NATIVE_WASM) {
        return Err("the sample no longer loads the filter from target/".into());
    }
    body = body.replace(NATIVE_WASM, DOCKER_WASM);
    body = body.replace("type: STATIC", "type: STRICT_DNS");
    out.push_str(&body);
    Ok(out)
}

/// The etcd members of the fleet stack, by compose service name (client port 2379).
pub const ETCD_MEMBERS: [&str; 3] = ["etcd-1", "etcd-2", "etcd-3"];

/// The fleet block every gateway of the fleet stack gets; `member` is left to each
/// gateway's node id (`--service-node` in the compose file), so one config serves all three.
const FLEET_BLOCK: &str = r#"  "fleet": {
    "etcd_cluster": "etcd",
    "prefix": "/envoy-circuit-breaker/school-gateway",
    "timeout": "500ms",
    "lease_ttl": "6s"
  }"#;

/// The fleet stack's config for `docker`, the text `docker_config` made: the same Envoy
/// with the fleet block in its plugin JSON and an `etcd` cluster listing the three members
/// as `/work/shared/notes/fleet-etcd.md` measured it must be: HTTP/2 (etcd's API is gRPC),
/// outlier detection that ejects a dead member after one failed call (round robin alone
/// keeps sending it every third call), an active check of etcd's gRPC health service (a
/// frozen member is let back after an ejection only to time out again), and keep-alive pings no more often than etcd's 5 s
/// minimum (more often, etcd drops the connection).
pub fn fleet_docker_config(docker: &str) -> Result<String, String> {
    let json = crate::stack::plugin_json_of(docker).ok_or("the config has no plugin JSON")?;
    let body = json.trim_end();
    let open = body
        .strip_suffix('}')
        .ok_or("the plugin JSON does not end with `}`")?
        .trim_end();
    if body.contains("\"fleet\"") {
        return Err("the plugin JSON already has a fleet block".into());
    }
    let with_fleet = format!("{open},\n{FLEET_BLOCK}\n}}\n");
    serde_json::from_str::<serde_json::Value>(&with_fleet)
        .map_err(|e| format!("the fleet plugin JSON does not parse: {e}"))?;
    let mut out = crate::stack::with_plugin_json(docker, &with_fleet)
        .ok_or("the config has no plugin JSON")?;
    let header_end = out
        .find("\nadmin:")
        .ok_or("the config has no admin block")?;
    out.replace_range(
        ..header_end,
        "# GENERATED from envoy/envoy.yaml by `make docker-config`; do not edit by hand.\n\
         # The fleet stack's gateways (envoy/docker-compose.fleet.yml): envoy.docker.yaml plus\n\
         # the fleet block in the plugin JSON and the `etcd` cluster. Each gateway runs it with\n\
         # its own `--service-node`, which is its member name in the fleet.",
    );
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(
        "  # The fleet's etcd: three members, reached over HTTP/2 (gRPC). One failed call ejects\n\
         \x20 # a member (outlier detection), so calls go to the members that answer.\n\
         \x20 - name: etcd\n\
         \x20   type: STRICT_DNS\n\
         \x20   connect_timeout: 1s\n\
         \x20   typed_extension_protocol_options:\n\
         \x20     envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n\
         \x20       \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n\
         \x20       explicit_http_config:\n\
         \x20         http2_protocol_options:\n\
         \x20           connection_keepalive: { interval: 6s, timeout: 2s }\n\
         \x20   outlier_detection:\n\
         \x20     split_external_local_origin_errors: true\n\
         \x20     consecutive_local_origin_failure: 1\n\
         \x20     max_ejection_percent: 100\n\
         \x20     base_ejection_time: 5s\n\
         \x20   # A frozen member still accepts connections and only times out; an ejection\n\
         \x20   # lets it back after base_ejection_time, to fail the next reconnect. etcd's gRPC\n\
         \x20   # health service keeps it out for as long as it does not answer.\n\
         \x20   health_checks:\n\
         \x20   - timeout: 0.5s\n\
         \x20     interval: 1s\n\
         \x20     no_traffic_interval: 1s\n\
         \x20     unhealthy_threshold: 1\n\
         \x20     healthy_threshold: 1\n\
         \x20     grpc_health_check: {}\n\
         \x20   load_assignment:\n\
         \x20     cluster_name: etcd\n\
         \x20     endpoints:\n\
         \x20     - lb_endpoints:\n",
    );
    for member in ETCD_MEMBERS {
        out.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {member}, port_value: 2379 }} }} }}\n"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_become_service_names_and_listeners_open_up() {
        let native = "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }\n\
            clusters:\n  - type: STATIC\n    x: { address: 127.0.0.1, port_value: 8081 } \n\
            y: { address: 127.0.0.1, port_value: 8082 } \n z: { address: 127.0.0.1, port_value: 8083 } \n\
            filename: target/wasm32-wasip1/release/envoy_circuit_breaker.wasm\n";
        let docker = docker_config(native).unwrap();
        assert!(docker.contains("address: 0.0.0.0, port_value: 9901"));
        assert!(docker.contains("address: auth-service, port_value: 8081"));
        assert!(docker.contains("address: student-service, port_value: 8083"));
        assert!(docker.contains("type: STRICT_DNS"));
        assert!(docker.contains("filename: envoy_circuit_breaker.wasm"));
        assert!(!docker.contains("127.0.0.1"));
    }

    #[test]
    fn the_fleet_config_adds_the_fleet_block_and_the_etcd_members() {
        let docker = "# old header\nadmin: x\n  clusters:\n  - name: auth\n\
            \x20 configuration:\n    \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
            \x20   value: |\n      {\n        \"default\": {}\n      }\n  - name: school\n";
        let fleet = fleet_docker_config(docker).unwrap();
        assert!(!fleet.contains("old header"));
        assert!(fleet.contains("\"etcd_cluster\": \"etcd\""), "{fleet}");
        assert!(fleet.contains("address: etcd-3, port_value: 2379"));
        assert!(fleet.contains("consecutive_local_origin_failure: 1"));
        assert!(
            fleet.contains("  - name: school\n  # The fleet's etcd"),
            "{fleet}"
        );
        assert!(fleet_docker_config(&fleet).is_err(), "a second fleet block");
    }

    #[test]
    fn a_sample_that_moved_on_is_refused() {
        assert!(docker_config("nothing here").is_err());
    }
}
