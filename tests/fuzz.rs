//! Fuzzing the parsers that take outside input: the plugin JSON, the state bytes in shared
//! data, the control API's paths and bodies, the outcome classifier and `Retry-After`.
//! Inputs are random bytes, random text from a hostile alphabet, and mutations of real
//! configurations and records; any panic fails, with the input that caused it. `make test`
//! runs FUZZ_CASES (default 100000) inputs per target; `make fuzz` runs 10000000 each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use envoy_circuit_breaker::core::codec;
use envoy_circuit_breaker::core::config::PluginConfig;
use envoy_circuit_breaker::core::control;
use envoy_circuit_breaker::core::outcome::{Classifier, StreamEnd};
use envoy_circuit_breaker::core::retry_after;
use envoy_circuit_breaker::core::settings::Settings;
use envoy_circuit_breaker::core::state::{Cause, Record, TripReason};
use envoy_circuit_breaker::core::window::{Window, WindowSpec};

fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
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
    fn text(&mut self, alphabet: &[&str], max: usize) -> String {
        (0..self.below(max + 1))
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
    /// `seed` with a few random edits: flips, insertions, deletions, truncation.
    fn mutate(&mut self, seed: &[u8], inserts: &[&str]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(5) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 => {
                    let piece = inserts[self.below(inserts.len())].as_bytes();
                    out.splice(at..at, piece.iter().copied());
                }
                2 if at < out.len() => {
                    let end = (at + 1 + self.below(8)).min(out.len());
                    out.drain(at..end);
                }
                3 => out.truncate(at),
                _ => {
                    let byte = self.next() as u8;
                    out.insert(at, byte);
                }
            }
        }
        out
    }
}

/// Runs `target` over `n` inputs from `make_input`, failing on the first panic.
fn fuzz<T: std::fmt::Debug>(
    name: &str,
    seed: u64,
    make_input: impl Fn(&mut Rng) -> T,
    target: impl Fn(&T),
) {
    let n = cases();
    let mut rng = Rng(seed);
    let tenth = (n / 10).max(1);
    for i in 0..n {
        if n >= 100_000 && i > 0 && i % tenth == 0 {
            eprintln!("fuzz | {name} | {i} of {n} inputs");
        }
        let input = make_input(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name}: input {i} panicked: {input:?}");
        }
    }
    println!("fuzz | {name} | {n} inputs | no panic");
}

const JSON_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1e309",
    "4294967296",
    "18446744073709551616",
    "0.5",
    "NaN",
    "\"5xx\"",
    "\"999-100\"",
    "\"60s\"",
    "\"0ms\"",
    "\"99999999999h\"",
    "\"forced_open\"",
    "\"\\u0000\"",
    "\"default\"",
    "\"clusters\"",
    "\"failure_threshold\"",
    "\"fallback\"",
    "\"headers\"",
    "\"events\"",
    "\u{1F4A5}",
    "\\",
    "\n",
];

fn seed_configs() -> Vec<Vec<u8>> {
    let root = common::root();
    let mut seeds = vec![
        std::fs::read(root.join("envoy/demo-plugin.json")).unwrap(),
        std::fs::read(root.join("examples/mixed-rules/plugin.json")).unwrap(),
    ];
    seeds.push(
        br#"{"default": {"failure_status": ["5xx", 429], "grpc_failure_codes": ["UNAVAILABLE", 13],
            "fallback": {"status": 200, "body": "{cluster} {retry_after}", "headers": {"x-a": "b"}},
            "fallback_cache": {"max_entries": 5, "max_age": "1m"}, "exclude_paths": ["/h"],
            "per_route": true, "mode": "dry_run", "window_type": "count", "window_size": 9},
            "events": {"cluster": "sink", "path": "/e", "timeout": "1s"}}"#
            .to_vec(),
    );
    seeds
}

#[test]
fn the_config_parser_never_panics() {
    let seeds = seed_configs();
    fuzz(
        "plugin JSON parser",
        0x5eed_0001,
        |rng| match rng.below(3) {
            0 => rng.bytes(300),
            1 => rng.text(JSON_PIECES, 60).into_bytes(),
            _ => {
                let seed = &seeds[rng.below(seeds.len())];
                rng.mutate(seed, JSON_PIECES)
            }
        },
        |input| {
            let _ = PluginConfig::parse(input);
        },
    );
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
    records
}

#[test]
fn the_state_decoder_never_panics_on_damaged_bytes() {
    let seeds = seed_records();
    fuzz(
        "shared-data record decoder",
        0x5eed_0002,
        |rng| match rng.below(2) {
            0 => rng.bytes(400),
            _ => {
                let seed = &seeds[rng.below(seeds.len())];
                rng.mutate(
                    seed,
                    &["\u{0}", "\u{ff}", "\u{cb}\u{2}", "\u{1}\u{0}\u{0}\u{0}"],
                )
            }
        },
        |input| {
            // Whatever decodes must encode back to the same bytes; a glance never
            // disagrees with a full decode.
            if let Ok(r) = codec::decode(input) {
                assert_eq!(codec::encode(&r), *input);
                assert_eq!(codec::glance(input), Some(codec::Glance::of(&r)));
            }
        },
    );
}

const PATH_PIECES: &[&str] = &[
    "/",
    "circuit-breakers",
    "health",
    "dashboard",
    "reset",
    "reset-all",
    "mode",
    "..",
    ".",
    "%2F",
    "%2e%2e",
    "%00",
    "%0d%0a",
    "%",
    "%zz",
    "%ff",
    "?",
    "#",
    "school",
    "auth",
    " ",
    "\r\n",
    "\u{0}",
    "é",
    "\u{202e}",
    "//",
];

#[test]
fn the_control_api_parsers_never_panic() {
    fuzz(
        "control API paths and methods",
        0x5eed_0003,
        |rng| {
            let methods = [
                "GET", "POST", "PUT", "DELETE", "", "get", "PATCH", "G\u{0}T",
            ];
            (
                methods[rng.below(methods.len())].to_string(),
                rng.text(PATH_PIECES, 12),
            )
        },
        |(method, path)| {
            if let Err(e) = control::route(method, path) {
                assert!(
                    !e.message.contains('\r') && !e.message.contains('\n'),
                    "{e:?}"
                );
            }
        },
    );
    fuzz(
        "control API mode bodies",
        0x5eed_0004,
        |rng| match rng.below(2) {
            0 => rng.bytes(200),
            _ => rng.mutate(br#"{"mode": "dry_run"}"#, JSON_PIECES),
        },
        |body| {
            let _ = control::parse_mode(body);
        },
    );
    fuzz(
        "bearer token check",
        0x5eed_0005,
        |rng| rng.bytes(80),
        |header| {
            assert!(
                control::authorize(Some("s3cret"), Some(header)).is_err()
                    || header == b"Bearer s3cret"
            );
        },
    );
}

#[test]
fn the_outcome_classifier_never_panics_and_agrees_with_itself() {
    let classifiers = [
        Classifier::default(),
        PluginConfig::parse(br#"{"default": {"failure_status": [429, "502-504"], "ignore_status": ["5xx"], "count_resets": false}}"#)
            .unwrap()
            .default
            .classifier,
    ];
    fuzz(
        "outcome classifier",
        0x5eed_0006,
        |rng| {
            let status = [
                0,
                200,
                204,
                404,
                429,
                499,
                500,
                503,
                504,
                599,
                600,
                1000,
                u32::MAX,
            ][rng.below(13)];
            let grpc = (rng.below(3) == 0).then(|| rng.below(40) as u32);
            (
                rng.below(2),
                StreamEnd {
                    status,
                    flags: rng.next() & 0x1fff_ffff,
                    grpc_status: grpc,
                },
                rng.below(2) == 0,
            )
        },
        |(which, end, complete)| {
            let c = &classifiers[*which];
            let full = c.classify(*end);
            if let Some(quick) = c.success_without_flags(end.status, end.grpc_status, *complete) {
                let without_flags = c.classify(StreamEnd { flags: 0, ..*end });
                assert_eq!(quick, without_flags, "{end:?}");
                let _ = full;
            }
        },
    );
}

#[test]
fn retry_after_values_never_panic_and_stay_numbers() {
    fuzz(
        "upstream Retry-After values",
        0x5eed_0007,
        |rng| match rng.below(2) {
            0 => rng.text(
                &[
                    "0",
                    "1",
                    "9",
                    " ",
                    ",",
                    ":",
                    "GMT",
                    "Sun",
                    "Nov",
                    "-",
                    "\r\n",
                    "1994",
                    "99999999999",
                ],
                12,
            ),
            _ => String::from_utf8_lossy(
                &rng.mutate(b"Sun, 06 Nov 1994 08:49:37 GMT", &["9", " ", "x", ":"]),
            )
            .into_owned(),
        },
        |value| {
            if let Some(ms) = retry_after::parse(value, 1_000_000) {
                assert!(ms > 0);
            }
        },
    );
}
