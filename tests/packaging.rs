//! The ways the filter reaches users besides `make run`: the docker-compose stack (derived
//! from the native config, parsed and validated), the Istio manifest and image, and the
//! JSON Schema every shipped plugin JSON must pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;
use envoy_circuit_breaker::core::config::PluginConfig;
use school_system::docker::{docker_config, fleet_docker_config, ETCD_MEMBERS};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap()
}

/// The plugin JSON of the sample config's breaker filter.
fn sample_plugin_json() -> Value {
    let config = yaml("envoy/envoy.yaml");
    let filters = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let wasm = &filters[0]["typed_config"]["config"];
    serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap()
}

#[test]
fn the_docker_config_is_derived_from_the_native_one() {
    let derived = docker_config(&read("envoy/envoy.yaml")).unwrap();
    assert!(
        derived == read("envoy/envoy.docker.yaml"),
        "envoy/envoy.docker.yaml is out of date: run `make docker-config`"
    );
}

#[test]
fn the_fleet_docker_config_is_derived_from_the_docker_one() {
    let derived = fleet_docker_config(&read("envoy/envoy.docker.yaml")).unwrap();
    assert!(
        derived == read("envoy/envoy.fleet.docker.yaml"),
        "envoy/envoy.fleet.docker.yaml is out of date: run `make docker-config`"
    );
}

#[test]
fn the_loopback_fleet_config_is_derived_from_the_native_one() {
    let derived = school_system::fleet::fleet_loopback_config(&read("envoy/envoy.yaml")).unwrap();
    assert!(
        derived == read("envoy/envoy.fleet.yaml"),
        "envoy/envoy.fleet.yaml is out of date: run `make docker-config`"
    );
}

#[test]
fn the_fleet_compose_file_runs_three_gateways_three_etcd_members_and_the_services() {
    let out = Command::new("docker-compose")
        .args(["-f", "envoy/docker-compose.fleet.yml", "config"])
        .current_dir(root())
        .env("CIRCUIT_BREAKER_ADMIN_TOKEN", "")
        .output()
        .expect("docker-compose (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = &parsed["services"];
    for name in ["auth-service", "school-service", "student-service"] {
        assert!(services[name]["build"].is_mapping(), "{name}:\n{text}");
    }
    for n in 1..=3 {
        let gateway = &services[format!("gateway-{n}").as_str()];
        assert_eq!(gateway["image"].as_str(), Some("envoyproxy/envoy:v1.40.0"));
        let command = serde_yaml::to_string(&gateway["command"]).unwrap();
        assert!(
            command.contains(&format!("- gateway-{n}\n")),
            "its own node id: {command}"
        );
        let mounts = serde_yaml::to_string(&gateway["volumes"]).unwrap();
        assert!(mounts.contains("envoy.fleet.docker.yaml"), "{mounts}");
        let networks = serde_yaml::to_string(&gateway["networks"]).unwrap();
        assert!(
            networks.contains("front") && networks.contains("store"),
            "{networks}"
        );
    }
    for member in ETCD_MEMBERS {
        let etcd = &services[member];
        assert_eq!(etcd["image"].as_str(), Some("quay.io/coreos/etcd:v3.4.23"));
        let command = serde_yaml::to_string(&etcd["command"]).unwrap();
        assert!(
            command.contains(&format!("http://{member}:2380,"))
                || command.contains(&format!("{member}=http://{member}:2380\n")),
            "{command}"
        );
    }
    // Docker publishes ports on the network whose name sorts first: the users' network,
    // so that a gateway cut off from etcd keeps its published ports.
    let networks: Vec<&str> = parsed["networks"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(networks.iter().min(), Some(&"front"), "{networks:?}");
    assert!(networks.contains(&"store"), "{networks:?}");
}

#[test]
fn the_docker_config_passes_envoy_validate() {
    // The container runs Envoy in /etc/envoy with the .wasm beside the config.
    let dir = scratch_dir().unwrap();
    std::os::unix::fs::symlink(
        root().join("target/wasm32-wasip1/release/envoy_circuit_breaker.wasm"),
        dir.join("envoy_circuit_breaker.wasm"),
    )
    .unwrap();
    let out = Command::new(envoy_bin())
        .current_dir(&dir)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(root().join("envoy/envoy.docker.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

#[test]
fn the_compose_file_parses() {
    let out = Command::new("docker-compose")
        .args(["-f", "envoy/docker-compose.yml", "config"])
        .current_dir(root())
        .env("CIRCUIT_BREAKER_ADMIN_TOKEN", "")
        .output()
        .expect("docker-compose (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = parsed["services"].as_mapping().unwrap();
    for name in [
        "auth-service",
        "school-service",
        "student-service",
        "envoy",
        "prometheus",
    ] {
        assert!(services.contains_key(name), "{name} missing:\n{text}");
    }
    assert_eq!(
        parsed["services"]["envoy"]["image"].as_str(),
        Some("envoyproxy/envoy:v1.40.0")
    );
    let mounts = serde_yaml::to_string(&parsed["services"]["envoy"]["volumes"]).unwrap();
    assert!(
        mounts.contains("envoy_circuit_breaker.wasm") && mounts.contains("envoy.docker.yaml"),
        "{mounts}"
    );
    let prometheus = serde_yaml::to_string(&parsed["services"]["prometheus"]["volumes"]).unwrap();
    assert!(
        prometheus.contains("examples/observability/prometheus.yml")
            && prometheus.contains("examples/observability/alerts.yml"),
        "Prometheus runs the shipped scrape config and rules: {prometheus}"
    );
    assert!(root().join("examples/school-system/Dockerfile").exists());
}

/// Istio's cluster name for a sample cluster.
fn istio_cluster(sample: &str) -> String {
    let port = match sample {
        "auth" => 8081,
        "school" => 8082,
        _ => 8083,
    };
    format!("outbound|{port}||{sample}-service.school-system.svc.cluster.local")
}

#[test]
fn the_istio_manifest_carries_the_sample_settings() {
    let manifest = yaml("examples/istio/wasm-plugin.yaml");
    assert_eq!(manifest["kind"].as_str(), Some("WasmPlugin"));
    assert_eq!(
        manifest["spec"]["failStrategy"].as_str(),
        Some("FAIL_RELOAD")
    );
    assert_eq!(
        manifest["spec"]["vmConfig"]["env"][0]["name"].as_str(),
        Some("CIRCUIT_BREAKER_ADMIN_TOKEN")
    );
    assert_eq!(
        manifest["spec"]["vmConfig"]["env"][0]["valueFrom"].as_str(),
        Some("HOST")
    );
    let istio_json: Value = serde_json::to_value(&manifest["spec"]["pluginConfig"]).unwrap();
    let istio = PluginConfig::parse(istio_json.to_string().as_bytes()).unwrap();
    let sample = PluginConfig::parse(sample_plugin_json().to_string().as_bytes()).unwrap();
    assert_eq!(istio.default, sample.default);
    assert_eq!(istio.clusters.len(), sample.clusters.len());
    for (name, settings) in &sample.clusters {
        assert_eq!(
            istio.clusters.get(&istio_cluster(name)),
            Some(settings),
            "{name}"
        );
    }
    let dockerfile = read("examples/istio/Dockerfile");
    let steps: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        steps,
        [
            "FROM scratch",
            "COPY envoy_circuit_breaker.wasm ./plugin.wasm"
        ]
    );
}

/// Validates `instance` against the committed schema with Python's `jsonschema`.
fn schema_errors(instance: &Value) -> Option<String> {
    let script = "import json,sys,jsonschema\n\
        schema=json.load(open(sys.argv[1]))\n\
        errors=[e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(json.load(sys.stdin))]\n\
        print('\\n'.join(errors)); sys.exit(1 if errors else 0)";
    let out = run_with_input(
        Command::new(venv_python())
            .args(["-c", script])
            .arg(root().join("schema/plugin-config.schema.json")),
        instance.to_string().as_bytes(),
    );
    (!out.status.success()).then(|| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
}

#[test]
fn every_shipped_plugin_json_passes_the_schema() {
    let manifest = yaml("examples/istio/wasm-plugin.yaml");
    let shipped = [
        ("envoy/envoy.yaml", sample_plugin_json()),
        (
            "envoy/envoy.fleet.docker.yaml",
            serde_json::from_str(
                &school_system::stack::plugin_json_of(&read("envoy/envoy.fleet.docker.yaml"))
                    .unwrap(),
            )
            .unwrap(),
        ),
        (
            "envoy/envoy.fleet.yaml",
            serde_json::from_str(
                &school_system::stack::plugin_json_of(&read("envoy/envoy.fleet.yaml")).unwrap(),
            )
            .unwrap(),
        ),
        (
            "envoy/demo-plugin.json",
            serde_json::from_str(&read("envoy/demo-plugin.json")).unwrap(),
        ),
        (
            "envoy/demo-fleet-plugin.json",
            serde_json::from_str(&read("envoy/demo-fleet-plugin.json")).unwrap(),
        ),
        (
            "examples/mixed-rules/plugin.json",
            serde_json::from_str(&read("examples/mixed-rules/plugin.json")).unwrap(),
        ),
        (
            "examples/istio/wasm-plugin.yaml",
            serde_json::to_value(&manifest["spec"]["pluginConfig"]).unwrap(),
        ),
    ];
    for (path, json) in shipped {
        assert_eq!(schema_errors(&json), None, "{path}");
        PluginConfig::parse(json.to_string().as_bytes()).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn the_schema_catches_what_the_filter_refuses() {
    for bad in [
        r#"{"default": {"failure_treshold": 5}}"#,
        r#"{"default": {"failure_threshold": -1}}"#,
        r#"{"default": {"open_duration": "60 seconds"}}"#,
        r#"{"default": {"mode": "panic"}}"#,
        r#"{"clusters": {"auth": {"failure_rate_threshold": 1.5}}}"#,
        r#"{"events": {"cluster": "x", "path": "no-slash"}}"#,
    ] {
        let json: Value = serde_json::from_str(bad).unwrap();
        assert!(
            schema_errors(&json).is_some(),
            "the schema let {bad} through"
        );
        assert!(
            PluginConfig::parse(bad.as_bytes()).is_err(),
            "the filter let {bad} through"
        );
    }
}
