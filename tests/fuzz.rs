//! The fuzz targets on stable: every committed input in `fuzz/corpus/<target>/`,
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` replayed through the same properties libFuzzer checks
//! (`fuzz/src/lib.rs`), then FUZZ_CASES (default 100000) seeded mutations of them per target,
//! so a machine without nightly still fuzzes. The coverage-guided runs are `make fuzz`.
//! `FUZZ_WRITE_SEEDS=1` writes the hand-made seeds below into `fuzz/seeds/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use envoy_circuit_breaker::core::codec;
use envoy_circuit_breaker::core::hosts::Address;
use envoy_circuit_breaker::core::settings::{Mode, Settings};
use envoy_circuit_breaker::core::state::{Cause, Record, State, TripReason};
use envoy_circuit_breaker::core::timeline::{Timeline, Traffic};
use envoy_circuit_breaker::core::window::{Window, WindowSpec};

fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// A small, seeded generator: the runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| self.next() as u8)
            .collect()
    }
    /// `seed` with a few random edits: flips, insertions, deletions, truncation.
    fn mutate(&mut self, seed: &[u8], inserts: &[&[u8]]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(6) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 => {
                    let piece = inserts[self.below(inserts.len())];
                    out.splice(at..at, piece.iter().copied());
                }
                2 if at < out.len() => {
                    let end = (at + 1 + self.below(8)).min(out.len());
                    out.drain(at..end);
                }
                3 => out.truncate(at),
                4 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = [0, 0xff, 0x7f, 0x80, b'"', b'%', b'\r'][self.below(7)];
                }
                _ => {
                    let byte = self.next() as u8;
                    out.insert(at, byte);
                }
            }
        }
        out
    }
}

/// Every committed input of `target`: the minimised corpus, the hand-made seeds (kept whole,
/// outside the minimising), then the regressions (inputs that once broke a property).
fn committed_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for dir in ["corpus", "seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap();
            inputs.push((path, bytes));
        }
    }
    inputs
}

/// Replays the committed inputs and the hand-made seeds of `target` through `check`, then
/// runs FUZZ_CASES mutations of them; fails naming every input that broke a property.
fn fuzz(target: &str, seed: u64, seeds: Vec<Vec<u8>>, inserts: &[&[u8]], check: fn(&[u8])) {
    let writing = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    if writing {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
    let committed = committed_inputs(target);
    assert!(
        writing || !committed.is_empty(),
        "{target}: no committed inputs under {}; the corpora are part of the repository",
        fuzz_dir().display()
    );
    let fails = |input: &[u8]| catch_unwind(AssertUnwindSafe(|| check(input))).is_err();
    let mut broken: Vec<String> = committed
        .iter()
        .filter(|(_, bytes)| fails(bytes))
        .map(|(path, _)| path.display().to_string())
        .collect();
    broken.extend(
        seeds
            .iter()
            .filter(|s| fails(s))
            .map(|s| format!("seed {s:?}")),
    );
    assert!(
        broken.is_empty(),
        "{target}: properties broken by {broken:?}"
    );

    let pool: Vec<&[u8]> = committed
        .iter()
        .map(|(_, b)| b.as_slice())
        .chain(seeds.iter().map(Vec::as_slice))
        .collect();
    let mut rng = Rng(seed);
    let n = cases();
    for i in 0..n {
        let input = match rng.below(4) {
            0 => rng.bytes(300),
            _ => {
                let base = pool[rng.below(pool.len())];
                rng.mutate(base, inserts)
            }
        };
        if fails(&input) {
            panic!("{target}: mutation {i} broke a property: {input:?}");
        }
    }
    println!(
        "fuzz | {target} | {} committed inputs, {} seeds, {n} mutations | properties hold",
        committed.len(),
        seeds.len()
    );
}

const JSON_PIECES: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"-1",
    b"1e309",
    b"4294967296",
    b"18446744073709551616",
    b"NaN",
    b"\"5xx\"",
    b"\"999-100\"",
    b"\"60s\"",
    b"\"99999999999h\"",
    b"\"forced_open\"",
    b"\"\\u0000\"",
    b"\"clusters\"",
    "\u{1F4A5}".as_bytes(),
    b"\\",
    b"\n",
];

/// `[method length][method][path]`, the control_route input layout.
fn route_input(method: &str, path: &str) -> Vec<u8> {
    let mut v = vec![method.len() as u8];
    v.extend_from_slice(method.as_bytes());
    v.extend_from_slice(path.as_bytes());
    v
}

#[test]
fn the_config_parser_never_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = vec![
        std::fs::read(root.join("envoy/demo-plugin.json")).unwrap(),
        std::fs::read(root.join("examples/mixed-rules/plugin.json")).unwrap(),
        br#"{"default": {"failure_status": ["5xx", 429], "grpc_failure_codes": ["UNAVAILABLE", 13],
            "fallback": {"status": 200, "body": "{cluster} {retry_after}", "headers": {"x-a": "b"}},
            "fallback_cache": {"max_entries": 5, "max_age": "1m"}, "exclude_paths": ["/h"],
            "per_route": true, "mode": "dry_run", "window_type": "count", "window_size": 9},
            "events": {"cluster": "sink", "path": "/e", "timeout": "1s"}}"#
            .to_vec(),
    ];
    fuzz("config", 0x5eed_0001, seeds, JSON_PIECES, checks::config);
}

fn seed_records() -> Vec<Vec<u8>> {
    let s = Settings::default();
    let mut records = Vec::new();
    let mut r = Record::default();
    records.push(codec::encode(&r));
    r.window.add_call(true, true, 5, s.window);
    r.transition(Cause::Tripped(TripReason::ConsecutiveFailures), &s, 10);
    records.push(codec::encode(&r));
    let count = WindowSpec::Count { size: 37 };
    let mut r = Record {
        window: Window::default(),
        ..Record::default()
    };
    for i in 0..50 {
        r.window.add_call(i % 3 == 0, i % 5 == 0, 0, count);
    }
    records.push(codec::encode(&r));
    let mut r = Record::default();
    for (host, failed) in [(&b"127.0.0.1:1"[..], true), (b"[::1]:2", false)] {
        r.hosts
            .record(Address::new(host), failed, !failed, 7, s.window);
    }
    r.hosts.record(None, true, false, 7, s.window);
    r.hosts.confined = true;
    records.push(codec::encode(&r));
    // The state and mode bytes map through tables, which give libFuzzer no edge to tell
    // their values apart, so the minimised corpus keeps none of these: seeds hold them.
    for (state, mode) in [
        (State::HalfOpen, Some(Mode::DryRun)),
        (State::Open, Some(Mode::ForcedOpen)),
        (State::Closed, Some(Mode::Disabled)),
    ] {
        let r = Record {
            state,
            mode_override: mode,
            ramping: state == State::Closed,
            probes_in_flight: 1,
            reason: Some(TripReason::ConsecutiveFailures),
            ..Record::default()
        };
        records.push(codec::encode(&r));
    }
    records
}

#[test]
fn the_state_decoder_never_panics_on_damaged_bytes() {
    fuzz(
        "record",
        0x5eed_0002,
        seed_records(),
        &[b"\0", b"\xff", b"\xcb\x02", b"\xcb\x03", b"\x01\0\0\0"],
        checks::record,
    );
}

#[test]
fn the_timeline_decoder_never_panics_and_a_change_stays_bounded() {
    fuzz(
        "timeline",
        0x5eed_0009,
        seed_timelines(),
        &[b"\0", b"\x01", b"\xff\xff\xff\xff", b"\xc0"],
        checks::timeline,
    );
}

fn seed_timelines() -> Vec<Vec<u8>> {
    const T0: u64 = 1_796_000_000_000;
    let mut t = Timeline::default();
    let mut seeds = vec![t.encode()];
    t.add(
        T0,
        &Traffic {
            successes: 3,
            failures: 2,
            ..Traffic::default()
        },
        State::Closed,
    );
    t.moved(T0 + 1_000, State::Open);
    seeds.push(t.encode());
    t.add(
        T0 + 12_000,
        &Traffic {
            refusals: 9,
            probes: 1,
            ..Traffic::default()
        },
        State::Open,
    );
    t.moved(T0 + 13_000, State::HalfOpen);
    t.moved(T0 + 13_500, State::Closed);
    seeds.push(t.encode());
    for i in 0..95 {
        t.add(
            T0 + i * 10_000,
            &Traffic {
                slow: 1,
                ..Traffic::default()
            },
            State::Closed,
        );
    }
    seeds.push(t.encode());
    seeds
}

#[test]
fn the_control_api_path_parser_never_panics_nor_echoes_control_characters() {
    let seeds = [
        ("GET", "/health"),
        ("GET", "/circuit-breakers"),
        ("GET", "/circuit-breakers/dashboard"),
        ("POST", "/circuit-breakers/reset-all"),
        ("GET", "/circuit-breakers/school?x=1#y"),
        ("POST", "/circuit-breakers/school/reset"),
        ("GET", "/circuit-breakers/school/history"),
        ("PUT", "/circuit-breakers/a%2Fb/mode"),
        ("DELETE", "/circuit-breakers/%zz/mode"),
    ]
    .iter()
    .map(|(m, p)| route_input(m, p))
    .collect();
    fuzz(
        "control_route",
        0x5eed_0003,
        seeds,
        &[
            b"/",
            b"circuit-breakers",
            b"reset",
            b"mode",
            b"..",
            b"%2F",
            b"%0d%0a",
            b"%ff",
            b"?",
            b"\r\n",
            b"\0",
            "\u{202e}".as_bytes(),
        ],
        checks::control_route,
    );
}

#[test]
fn the_control_api_mode_body_parser_never_panics() {
    let seeds = [
        r#"{"mode": "dry_run"}"#,
        r#"{"mode": null}"#,
        r#"{"mode": 1e5}"#,
        r#"{"mode": "forced_open", "x": 1}"#,
        "[]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz(
        "mode_body",
        0x5eed_0004,
        seeds,
        JSON_PIECES,
        checks::mode_body,
    );
}

#[test]
fn the_bearer_token_check_admits_exactly_the_token() {
    let seeds = vec![
        b"\x06s3cretBearer s3cret".to_vec(),
        b"\x06s3cretBearer s3creT".to_vec(),
        b"\x06s3cretbearer s3cret".to_vec(),
        b"\x00Bearer ".to_vec(),
        b"\x01xBearer xx".to_vec(),
    ];
    fuzz(
        "token",
        0x5eed_0005,
        seeds,
        &[b"Bearer ", b" ", b"s3cret"],
        checks::token,
    );
}

#[test]
fn the_outcome_classifier_never_panics_and_agrees_with_itself() {
    let mut seeds = Vec::new();
    for (control, status, flags, grpc) in [
        (2u8, 200u32, 0u64, 0u32),
        (3, 503, 0, 0),
        (6, 200, 0, 14),
        (7, 200, 0, 13),
        (2, 0, 0x40, 0),
        (0, 599, 0x1, 0),
        (3, 429, 0x10, 0),
    ] {
        let mut v = vec![control];
        v.extend_from_slice(&status.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&grpc.to_le_bytes());
        seeds.push(v);
    }
    fuzz(
        "classifier",
        0x5eed_0006,
        seeds,
        &[b"\xff\xff\xff\xff", b"\xf4\x01", b"\x58\x02"],
        checks::classifier,
    );
}

#[test]
fn retry_after_values_never_panic_and_stay_bounded() {
    let seeds = [
        "120",
        "0",
        " 9999999999 ",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Fri, 31 Dec 9999 23:59:60 GMT",
        "Wed, 01 Jan 2031 00:00:00 GMT",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz(
        "retry_after",
        0x5eed_0007,
        seeds,
        &[b"9", b" ", b"GMT", b":", b", ", b"Feb", b"\r\n"],
        checks::retry_after,
    );
}
