//! `make docker-config`: writes `envoy/envoy.docker.yaml` from `envoy/envoy.yaml`, from
//! that the fleet stack's `envoy/envoy.fleet.docker.yaml`, and the loopback fleet's
//! `envoy/envoy.fleet.yaml` (`make run-fleet`, `make demo-fleet`).
//! `docker-config --plugin FILE --out FILE` writes a variant with other plugin JSON (the
//! demo's short open times, for `make demo-docker`) to a file of its own instead.

use school_system::docker::{docker_config, fleet_docker_config};
use school_system::fleet::fleet_loopback_config;
use school_system::stack::{root, with_plugin_json};

fn main() {
    match write() {
        Ok(target) => println!("wrote {target}"),
        Err(e) => {
            eprintln!("docker-config: {e}");
            std::process::exit(1);
        }
    }
}

fn write() -> Result<String, String> {
    let native = root().join("envoy/envoy.yaml");
    let target = school_system::arg("--out")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("envoy/envoy.docker.yaml"));
    let text = std::fs::read_to_string(&native)
        .map_err(|e| format!("cannot read {}: {e}", native.display()))?;
    let mut docker = docker_config(&text)?;
    let custom = school_system::arg("--out").is_some() || school_system::arg("--plugin").is_some();
    if !custom {
        let fleet = root().join("envoy/envoy.fleet.docker.yaml");
        std::fs::write(&fleet, fleet_docker_config(&docker)?)
            .map_err(|e| format!("cannot write {}: {e}", fleet.display()))?;
        println!("wrote {}", fleet.display());
        let loopback = root().join("envoy/envoy.fleet.yaml");
        std::fs::write(&loopback, fleet_loopback_config(&text)?)
            .map_err(|e| format!("cannot write {}: {e}", loopback.display()))?;
        println!("wrote {}", loopback.display());
    }
    if let Some(plugin) = school_system::arg("--plugin") {
        let json =
            std::fs::read_to_string(&plugin).map_err(|e| format!("cannot read {plugin}: {e}"))?;
        docker = with_plugin_json(&docker, &json).ok_or("the config has no plugin JSON")?;
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&target, docker)
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    Ok(target.display().to_string())
}
