//! The docker-compose stack's Envoy config, derived from the native sample so the two
//! cannot drift: listeners on all interfaces inside the container, upstreams by their
//! compose service names, and the `.wasm` next to the config in Envoy's working directory.

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
    fn a_sample_that_moved_on_is_refused() {
        assert!(docker_config("nothing here").is_err());
    }
}
