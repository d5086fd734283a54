//! Fleet mode's shipped configs: the plugin JSON's `fleet` block and the `etcd` cluster,
//! added to a sample config. `envoy/envoy.fleet.yaml` (three gateways and three etcd members
//! on loopback: `make run-fleet`, `make demo-fleet`) is derived from `envoy/envoy.yaml` here,
//! and the docker fleet's config the same way (`docker.rs`), so none of them can drift.

/// One loopback gateway of `make run-fleet`: its node id and ports.
pub struct Gateway {
    pub node: &'static str,
    pub gateway: u16,
    pub admin: u16,
    pub control: u16,
}

/// The three gateways: `envoy/envoy.fleet.yaml` holds gateway-1's ports; the others run
/// the same file with these substituted (the docker fleet publishes the same numbers).
pub const GATEWAYS: [Gateway; 3] = [
    Gateway {
        node: "gateway-1",
        gateway: 10001,
        admin: 9911,
        control: 9921,
    },
    Gateway {
        node: "gateway-2",
        gateway: 10002,
        admin: 9912,
        control: 9922,
    },
    Gateway {
        node: "gateway-3",
        gateway: 10003,
        admin: 9913,
        control: 9923,
    },
];

/// Client and peer ports of the three loopback etcd members (etcd's own local-cluster
/// numbering: 2379, 22379, 32379).
pub const ETCD_PORTS: [(u16, u16); 3] = [(2379, 2380), (22379, 22380), (32379, 32380)];

/// The fleet block of the shipped configs; `member` is left to each gateway's node id
/// (`--service-node`), so one config serves every gateway. `trip_quorum` 1: the stories
/// these fleets tell (a trip through one gateway refused by the others, through etcd's
/// faults) send one gateway's traffic at a time; the default, 2, waits for a second.
const FLEET_BLOCK: &str = r#"  "fleet": {
    "etcd_cluster": "etcd",
    "prefix": "/envoy-circuit-breaker/school-gateway",
    "timeout": "500ms",
    "lease_ttl": "6s",
    "trip_quorum": 1
  }"#;

/// `config` with the fleet block in its plugin JSON, `header` in place of its leading
/// comment, and an `etcd` cluster of `kind` (`STATIC`, `STRICT_DNS`) listing `members`
/// as `/work/shared/notes/fleet-etcd.md` measured it must be: HTTP/2 (etcd's API is gRPC),
/// outlier detection that ejects a dead member after one failed call (round robin alone
/// keeps sending it every third call), an active check of etcd's gRPC health service (a
/// frozen member is let back after an ejection only to time out again), and keep-alive
/// pings no more often than etcd's 5 s minimum (more often, etcd drops the connection).
pub fn with_fleet(
    config: &str,
    header: &str,
    kind: &str,
    members: &[(&str, u16)],
) -> Result<String, String> {
    let json = crate::stack::plugin_json_of(config).ok_or("the config has no plugin JSON")?;
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
    let mut out = crate::stack::with_plugin_json(config, &with_fleet)
        .ok_or("the config has no plugin JSON")?;
    let header_end = out
        .find("\nadmin:")
        .ok_or("the config has no admin block")?;
    out.replace_range(..header_end, header.trim_end());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "  # The fleet's etcd: three members, reached over HTTP/2 (gRPC). One failed call ejects\n\
         \x20 # a member (outlier detection), so calls go to the members that answer.\n\
         \x20 - name: etcd\n\
         \x20   type: {kind}\n"
    ));
    out.push_str(
        "    connect_timeout: 1s\n\
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
    for (address, port) in members {
        out.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {address}, port_value: {port} }} }} }}\n"
        ));
    }
    Ok(out)
}

/// `envoy/envoy.fleet.yaml` from `native`, the text of `envoy/envoy.yaml`: gateway-1's
/// ports, the fleet block, and the three loopback etcd members.
pub fn fleet_loopback_config(native: &str) -> Result<String, String> {
    let mut body = native.to_string();
    let first = &GATEWAYS[0];
    for (from, to) in [
        (10000, first.gateway),
        (9901, first.admin),
        (9902, first.control),
    ] {
        let moved = crate::stack::with_port(&body, from, to);
        if moved == body {
            return Err(format!("the sample has no port {from}"));
        }
        body = moved;
    }
    let members: Vec<(&str, u16)> = ETCD_PORTS.iter().map(|(c, _)| ("127.0.0.1", *c)).collect();
    with_fleet(
        &body,
        "# GENERATED from envoy/envoy.yaml by `make docker-config`; do not edit by hand.\n\
         # Fleet mode on loopback (`make run-fleet`, `make demo-fleet`): envoy.yaml plus the\n\
         # fleet block in the plugin JSON and the `etcd` cluster (three members on 2379, 22379,\n\
         # 32379). This is gateway-1's file; gateway-2 and gateway-3 run it with their ports\n\
         # substituted (10002/9912/9922, 10003/9913/9923: tools/run-fleet.sh). Each runs with\n\
         # its own `--service-node`, which is its member name in the fleet.",
        "STATIC",
        &members,
    )
}

/// `yaml` (gateway-1's file) with the listener and admin ports of gateway `n` (0-based).
pub fn for_gateway(yaml: &str, n: usize) -> Option<String> {
    let (first, to) = (&GATEWAYS[0], GATEWAYS.get(n)?);
    Some(with_ports(
        yaml,
        &[
            (first.gateway, to.gateway),
            (first.admin, to.admin),
            (first.control, to.control),
        ],
    ))
}

/// `yaml` with every `port_value: <from>` of `moves` made `<to>`, all in one pass, so a
/// port moved to a number that another move starts from is not moved twice.
pub fn with_ports(yaml: &str, moves: &[(u16, u16)]) -> String {
    const KEY: &str = "port_value: ";
    let mut out = String::with_capacity(yaml.len());
    let mut rest = yaml;
    while let Some(at) = rest.find(KEY) {
        let digits_at = at + KEY.len();
        out.push_str(&rest[..digits_at]);
        rest = &rest[digits_at..];
        let len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let moved = rest[..len]
            .parse::<u16>()
            .ok()
            .and_then(|port| moves.iter().find(|(from, _)| *from == port))
            .map(|(_, to)| *to);
        match moved {
            Some(to) => out.push_str(&to.to_string()),
            None => out.push_str(&rest[..len]),
        }
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# old header\nadmin: { port_value: 9901 }\n\
        listeners: [{ port_value: 10000 }, { port_value: 9902 }]\n  clusters:\n  - name: auth\n\
        \x20 configuration:\n    \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
        \x20   value: |\n      {\n        \"default\": {}\n      }\n  - name: school\n";

    #[test]
    fn the_loopback_config_is_gateway_ones_with_the_fleet_and_three_members() {
        let fleet = fleet_loopback_config(SAMPLE).unwrap();
        assert!(!fleet.contains("old header"));
        assert!(fleet.contains("port_value: 10001 }"), "{fleet}");
        assert!(fleet.contains("port_value: 9911 }"), "{fleet}");
        assert!(fleet.contains("\"etcd_cluster\": \"etcd\""), "{fleet}");
        for port in ["2379", "22379", "32379"] {
            assert!(fleet.contains(&format!("address: 127.0.0.1, port_value: {port} ")));
        }
        assert!(fleet.contains("type: STATIC"));
        assert!(fleet.contains("grpc_health_check: {}"));
        let third = for_gateway(&fleet, 2).unwrap();
        assert!(third.contains("port_value: 10003 }") && third.contains("port_value: 9923 }"));
        assert!(!third.contains("port_value: 10001 }"));
        assert!(for_gateway(&fleet, 3).is_none());
    }

    #[test]
    fn ports_move_in_one_pass() {
        let yaml = "a: { port_value: 2379 }\nb: { port_value: 22379 }\nc: { port_value: 123790 }\n";
        let moved = with_ports(yaml, &[(2379, 22379), (22379, 2379)]);
        assert_eq!(
            moved,
            "a: { port_value: 22379 }\nb: { port_value: 2379 }\nc: { port_value: 123790 }\n"
        );
    }

    #[test]
    fn a_sample_without_the_gateway_port_is_refused() {
        assert!(fleet_loopback_config("admin: x\n").is_err());
    }
}
