//! `make docker-config`: writes `envoy/envoy.docker.yaml` from `envoy/envoy.yaml`.

use school_system::docker::docker_config;
use school_system::stack::root;

fn main() {
    let native = root().join("envoy/envoy.yaml");
    let target = root().join("envoy/envoy.docker.yaml");
    let result = std::fs::read_to_string(&native)
        .map_err(|e| format!("cannot read {}: {e}", native.display()))
        .and_then(|text| docker_config(&text))
        .and_then(|docker| {
            std::fs::write(&target, docker)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))
        });
    match result {
        Ok(()) => println!("wrote {}", target.display()),
        Err(e) => {
            eprintln!("docker-config: {e}");
            std::process::exit(1);
        }
    }
}
