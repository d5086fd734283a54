//! The spike's proof: the real Envoy runs `etcd_spike.wasm`, which sends `core::fleet`'s
//! etcd messages to a real etcd; this checks every answer it logged and what etcd holds.
//! Ignored by default because it needs the spike's .wasm built first:
//! `cargo build --target wasm32-wasip1 --release -p etcd-spike && cargo test -p etcd-spike -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::time::{Duration, Instant};

use envoy_circuit_breaker::core::fleet::keys;
use envoy_circuit_breaker::core::fleet::record::{FleetCause, FleetRecord};
use envoy_circuit_breaker::core::state::{Counts, State, TripReason};
use school_system::etcd::{Etcd, Options};
use school_system::stack::{free_port, poll, root, Envoy};

const PREFIX: &str = "/ecb/spike";

fn record(generation: u32, member: &str) -> FleetRecord {
    FleetRecord {
        state: State::Open,
        reason: Some(TripReason::ConsecutiveFailures),
        cause: FleetCause::Tripped,
        mode_override: None,
        generation,
        published_at_ms: 1_700_000_000_000,
        open_for_ms: 30_000,
        trips_in_row: 1,
        probe_successes: 0,
        counts: Counts {
            consecutive_failures: 5,
            ..Counts::default()
        },
        member: member.into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// An Envoy with the spike filter and an `etcd` cluster on `etcd_port`, HTTP/2, with TLS
/// when `tls` names (CA, client certificate, client key).
fn envoy_yaml(etcd_port: u16, config: &str, tls: Option<(String, String, String)>) -> String {
    let wasm = root().join("target/wasm32-wasip1/release/etcd_spike.wasm");
    assert!(
        wasm.exists(),
        "build it first: cargo build --target wasm32-wasip1 --release -p etcd-spike"
    );
    let transport = match tls {
        None => String::new(),
        Some((ca, cert, key)) => format!(
            r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: {{ filename: "{cert}" }}
            private_key: {{ filename: "{key}" }}
          validation_context:
            trusted_ca: {{ filename: "{ca}" }}"#
        ),
    };
    let config = config.replace('\n', "\\n");
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {gateway} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gw
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: spike
                root_id: spike
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{config}"
                vm_config:
                  vm_id: spike
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{wasm}" }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: etcd
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: etcd
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {etcd_port} }} }}{transport}
"#,
        gateway = free_port().unwrap(),
        wasm = wasm.display(),
    )
}

/// Waits for a `SPIKE` log line containing `needle`; returns it.
fn line(envoy: &Envoy, needle: &str, within: Duration) -> String {
    poll(within, || {
        envoy
            .log_lines("SPIKE ")
            .into_iter()
            .find(|l| l.contains(needle))
    })
    .unwrap_or_else(|| {
        panic!(
            "no SPIKE line with {needle:?}; spike said:\n{}",
            envoy.log_lines("SPIKE ").join("\n")
        )
    })
}

/// The value logged after `key@rev:` in a `kvs=` list.
fn logged_value(line: &str, key: &str) -> (i64, Vec<u8>) {
    let at = line.find(&format!("{key}@")).unwrap() + key.len() + 1;
    let rest = &line[at..];
    let (rev, rest) = rest.split_once(':').unwrap();
    let value = rest.split([';', ' ']).next().unwrap();
    (rev.parse().unwrap(), unhex(value))
}

fn field(line: &str, name: &str) -> String {
    let at = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
    line[at..].split([' ', ',']).next().unwrap().to_string()
}

/// The unary half of the spike: every call answered and decoded as designed.
fn check_unary(envoy: &Envoy, a: &FleetRecord, b: &FleetRecord) -> i64 {
    let decision = keys::decision(PREFIX, "school");
    let slot = keys::slot(PREFIX, "school", 2, 0);
    let w = Duration::from_secs(10);
    let lease = line(envoy, "step=lease", w);
    assert_eq!(field(&lease, "ttl"), "5", "{lease}");
    let p1 = line(envoy, "step=publish1", w);
    assert!(
        p1.contains("succeeded=true"),
        "create-if-absent on a new key: {p1}"
    );
    let r1: i64 = field(&p1, "revision").parse().unwrap();
    let p2 = line(envoy, "step=publish2", w);
    assert!(
        p2.contains("succeeded=false"),
        "create-if-absent on an existing key: {p2}"
    );
    let (rev, value) = logged_value(&p2, &decision);
    assert_eq!(
        rev, r1,
        "the failure branch returns the winner's mod_revision"
    );
    assert_eq!(FleetRecord::decode(&value).unwrap(), *a);
    let p3 = line(envoy, "step=publish3", w);
    assert!(
        p3.contains("succeeded=true"),
        "CAS on the right mod_revision: {p3}"
    );
    let r2: i64 = field(&p3, "revision").parse().unwrap();
    assert!(r2 > r1);
    let p4 = line(envoy, "step=publish4", w);
    assert!(
        p4.contains("succeeded=false"),
        "CAS on a stale mod_revision: {p4}"
    );
    let (rev, value) = logged_value(&p4, &decision);
    assert_eq!(rev, r2);
    assert_eq!(FleetRecord::decode(&value).unwrap(), *b);
    let c1 = line(envoy, "step=claim1", w);
    assert!(
        c1.contains("succeeded=true"),
        "a free slot is claimed: {c1}"
    );
    let c2 = line(envoy, "step=claim2", w);
    assert!(
        c2.contains("succeeded=false"),
        "a taken slot is refused: {c2}"
    );
    let (_, slot_value) = logged_value(&c2, &slot);
    assert!(slot_value.is_empty(), "slots are listed keys only");
    let (rev, value) = logged_value(&c2, &decision);
    assert_eq!((rev, FleetRecord::decode(&value).unwrap()), (r2, b.clone()));
    let c3 = line(envoy, "step=claim3", w);
    assert!(
        c3.contains("succeeded=true"),
        "a second slot is claimed: {c3}"
    );
    let range = line(envoy, "step=range", w);
    assert_eq!(field(&range, "count"), "4", "{range}");
    // Publish on top of the half-open record, deleting exactly slot 1 in the same Txn.
    let release = line(envoy, "step=release", w);
    assert!(release.contains("succeeded=true"), "{release}");
    r2
}

#[test]
#[ignore = "needs the spike's .wasm: see the module doc"]
fn the_fleet_messages_work_on_the_wire_through_envoy() {
    let mut etcd = Etcd::start(&Options {
        members: 1,
        ..Options::default()
    })
    .unwrap();
    let (a, b) = (record(1, "spike-a"), record(2, "spike-b"));
    let config = format!(
        "prefix={PREFIX}\nrecord_a={}\nrecord_b={}\nkeepalive_ms=3000",
        hex(&a.encode()),
        hex(&b.encode())
    );
    let yaml = envoy_yaml(etcd.members[0].client_port, &config, None);
    let envoy = Envoy::start(&yaml, 1).unwrap();
    check_unary(&envoy, &a, &b);
    // What etcd holds is the record the CAS wrote, as etcdctl reads it.
    let stored = etcd
        .ctl_command(&etcd.endpoints())
        .args([
            "get",
            &keys::decision(PREFIX, "school"),
            "--print-value-only",
        ])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        FleetRecord::decode(stored.strip_suffix(b"\n").unwrap()).unwrap(),
        a,
        "the release's put"
    );
    let slots = etcd
        .ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &keys::slots(PREFIX, "school"),
        ])
        .unwrap();
    assert_eq!(
        slots.trim(),
        keys::slot(PREFIX, "school", 2, 0),
        "slot 1 deleted by key, slot 0 left"
    );

    // The watch, opened from the Range's revision + 1, replays the release made after it.
    line(&envoy, "watch created", Duration::from_secs(5));
    let replayed = line(
        &envoy,
        &format!("watch event put key={}", keys::decision(PREFIX, "school")),
        Duration::from_secs(5),
    );
    assert_eq!(unhex(&field(&replayed, "value")), a.encode());
    line(
        &envoy,
        &format!(
            "watch event delete key={}",
            keys::slot(PREFIX, "school", 2, 1)
        ),
        Duration::from_secs(5),
    );
    // It answers progress requests and delivers a put made by etcdctl.
    line(&envoy, "watch progress", Duration::from_secs(5));
    let c = record(9, "etcdctl");
    let other = keys::decision(PREFIX, "other");
    let put_at = Instant::now();
    // The value goes through stdin: a record holds NUL bytes, which no argument can.
    let mut put = etcd
        .ctl_command(&etcd.endpoints())
        .args(["put", &other])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin.take().unwrap().write_all(&c.encode()).unwrap();
    assert!(put.wait().unwrap().success());
    let event = line(
        &envoy,
        &format!("watch event put key={other}"),
        Duration::from_secs(5),
    );
    eprintln!(
        "watch event seen {:?} after etcdctl put returned",
        put_at.elapsed()
    );
    assert_eq!(unhex(&field(&event, "value")), c.encode());

    // Keep-alives stop after 3 s; the lease (5 s) expires and the slot and member keys go.
    line(&envoy, "keep-alive ttl=5", Duration::from_secs(5));
    let slot = keys::slot(PREFIX, "school", 2, 0);
    let gone = line(
        &envoy,
        &format!("watch event delete key={slot}"),
        Duration::from_secs(20),
    );
    eprintln!("{gone}");
    line(
        &envoy,
        &format!("watch event delete key={}", keys::member(PREFIX, "spike")),
        Duration::from_secs(5),
    );

    // A frozen etcd goes silent; the progress requests' deadline finds it.
    let frozen_at = Instant::now();
    etcd.freeze(0).unwrap();
    let dead = line(&envoy, "watch dead", Duration::from_secs(10));
    let detected = frozen_at.elapsed();
    eprintln!("frozen etcd detected after {detected:?}: {dead}");
    assert!(detected < Duration::from_secs(3), "{detected:?}");
    etcd.thaw(0).unwrap();
    let reopened = poll(Duration::from_secs(15), || {
        (envoy.log_lines("SPIKE watch created").len() >= 2).then_some(())
    });
    assert!(
        reopened.is_some(),
        "{}",
        envoy.log_lines("SPIKE ").join("\n")
    );
    eprintln!("{}", envoy.log_lines("SPIKE ").join("\n"));
}

#[test]
#[ignore = "needs the spike's .wasm: see the module doc"]
fn tls_client_certificates_and_etcd_auth_work_through_envoy() {
    let etcd = Etcd::start(&Options {
        members: 1,
        tls: true,
        root_password: Some("root-pw".into()),
    })
    .unwrap();
    etcd.add_user("fleet", "fleet-pw", "/ecb/").unwrap();
    let certs = etcd.certs.clone().unwrap();
    let tls = Some((
        certs.ca.display().to_string(),
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    ));
    let (a, b) = (record(1, "spike-a"), record(2, "spike-b"));
    let config = format!(
        "prefix={PREFIX}\nrecord_a={}\nrecord_b={}\nuser=fleet\npassword=fleet-pw",
        hex(&a.encode()),
        hex(&b.encode())
    );
    let envoy = Envoy::start(
        &envoy_yaml(etcd.members[0].client_port, &config, tls.clone()),
        1,
    )
    .unwrap();
    let auth = line(&envoy, "step=auth", Duration::from_secs(10));
    assert!(auth.contains("token_len="), "{auth}");
    check_unary(&envoy, &a, &b);
    line(&envoy, "watch created", Duration::from_secs(5));
    drop(envoy);

    let wrong = config.replace("password=fleet-pw", "password=wrong");
    let envoy = Envoy::start(&envoy_yaml(etcd.members[0].client_port, &wrong, tls), 1).unwrap();
    let refused = line(&envoy, "step=auth", Duration::from_secs(10));
    eprintln!("wrong password: {refused}");
    assert!(refused.contains("status=3"), "{refused}");
    drop(envoy);

    let envoy = Envoy::start(&envoy_yaml(etcd.members[0].client_port, &config, None), 1).unwrap();
    let plain = line(&envoy, "step=auth", Duration::from_secs(10));
    eprintln!("plain text to a TLS etcd: {plain}");
    assert!(plain.contains("status=14"), "{plain}");
}

#[test]
#[ignore = "needs the spike's .wasm: see the module doc"]
fn quorum_loss_as_a_filter_sees_it() {
    let mut etcd = Etcd::start(&Options {
        members: 3,
        ..Options::default()
    })
    .unwrap();
    let (a, b) = (record(1, "spike-a"), record(2, "spike-b"));
    let config = format!(
        "prefix={PREFIX}\nrecord_a={}\nrecord_b={}\nkeepalive_ms=600000",
        hex(&a.encode()),
        hex(&b.encode())
    );
    // Envoy reaches member 0 only; break_quorum keeps member 0 and kills the two others.
    let envoy = Envoy::start(&envoy_yaml(etcd.members[0].client_port, &config, None), 1).unwrap();
    check_unary(&envoy, &a, &b);
    line(&envoy, "watch progress", Duration::from_secs(5));
    line(&envoy, "keep-alive ttl=5", Duration::from_secs(5));
    let was_leader = etcd.leader() == Some(0);
    let before = envoy.log_lines("SPIKE ").len();
    let lost_at = Instant::now();
    assert_eq!(etcd.break_quorum().unwrap(), 0);
    let mut seen: Vec<(String, Duration)> = Vec::new();
    let signs = [
        "watch closed",
        "watch dead",
        "keep-alive silent",
        "keep-alive closed",
    ];
    while lost_at.elapsed() < Duration::from_secs(12) {
        let lines = envoy.log_lines("SPIKE ");
        for sign in signs {
            if !seen.iter().any(|(s, _)| s == sign)
                && lines[before..].iter().any(|l| l.contains(sign))
            {
                seen.push((sign.to_string(), lost_at.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let progress_after = envoy.log_lines("SPIKE ")[before..]
        .iter()
        .filter(|l| l.contains("watch progress"))
        .cloned()
        .collect::<Vec<_>>();
    eprintln!("member 0 was leader: {was_leader}; after quorum loss: {seen:?}");
    eprintln!(
        "{}",
        envoy.log_lines("SPIKE ")[before..]
            .iter()
            .filter(|l| !l.contains("watch progress") && !l.contains("keep-alive ttl"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "progress answers after quorum loss:\n{}",
        progress_after.join("\n")
    );
    let first = seen.iter().map(|(_, t)| *t).min();
    assert!(
        first.is_some_and(|t| t < Duration::from_secs(10)),
        "quorum loss went unseen: {seen:?}"
    );
}

#[test]
#[ignore = "needs the spike's .wasm: see the module doc"]
fn one_watch_per_envoy_process_however_many_workers() {
    let etcd = Etcd::start(&Options {
        members: 1,
        ..Options::default()
    })
    .unwrap();
    let (a, b) = (record(1, "spike-a"), record(2, "spike-b"));
    let config = format!(
        "prefix={PREFIX}\nrecord_a={}\nrecord_b={}",
        hex(&a.encode()),
        hex(&b.encode())
    );
    let yaml = envoy_yaml(etcd.members[0].client_port, &config, None);
    // 4 workers and the main thread: 5 root contexts tick, plus the canary's configure.
    let envoy = Envoy::start(&yaml, 4).unwrap();
    check_unary(&envoy, &a, &b);
    line(&envoy, "watch progress", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    let holders = envoy.log_lines("SPIKE holder");
    assert_eq!(holders.len(), 1, "{holders:#?}");
    assert_eq!(envoy.log_lines("SPIKE watch opened").len(), 1);
    // etcd's own count of watch streams agrees.
    let url = format!("127.0.0.1:{}", etcd.members[0].client_port);
    let metrics = school_system::client::get(&url, "/metrics").unwrap().text();
    let streams: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("etcd_debugging_mvcc_watch_stream_total"))
        .collect();
    eprintln!("{streams:?}");
    assert_eq!(streams, ["etcd_debugging_mvcc_watch_stream_total 1"]);
}
