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

/// The fleet stack's config for `docker`, the text `docker_config` made: the same Envoy
/// with the fleet block in its plugin JSON and an `etcd` cluster listing the three members
/// by compose service name (see [`crate::fleet::with_fleet`]).
pub fn fleet_docker_config(docker: &str) -> Result<String, String> {
    let members: Vec<(&str, u16)> = ETCD_MEMBERS.iter().map(|m| (*m, 2379)).collect();
    crate::fleet::with_fleet(
        docker,
        "# GENERATED from envoy/envoy.yaml by `make docker-config`; do not edit by hand.\n\
         # The fleet stack's gateways (envoy/docker-compose.fleet.yml): envoy.docker.yaml plus\n\
         # the fleet block in the plugin JSON and the `etcd` cluster. Each gateway runs it with\n\
         # its own `--service-node`, which is its member name in the fleet.",
        "STRICT_DNS",
        &members,
    )
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
