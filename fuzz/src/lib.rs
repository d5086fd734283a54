//! The fuzz targets' properties, one function per target, each taking the raw input bytes.
//! libFuzzer calls them from `fuzz_targets/` (nightly, coverage-guided); `tests/fuzz.rs`
//! replays the committed corpora through the same functions on stable, so both check the
//! same things with the same inputs. A property that does not hold panics, which is what
//! both harnesses report as a failure.

use std::sync::OnceLock;

use envoy_circuit_breaker::core::codec;
use envoy_circuit_breaker::core::config::PluginConfig;
use envoy_circuit_breaker::core::control;
use envoy_circuit_breaker::core::limits::TIMELINE_BUCKETS;
use envoy_circuit_breaker::core::outcome::{Classifier, StreamEnd};
use envoy_circuit_breaker::core::retry_after;
use envoy_circuit_breaker::core::state::State;
use envoy_circuit_breaker::core::timeline::{self, Timeline, Traffic};

/// The longest a control API error message may be: echoed text is cut to 200 characters,
/// and a message echoes at most a path and a method around a fixed sentence.
const MAX_MESSAGE_CHARS: usize = 600;

/// The plugin JSON: parsing never panics, and whatever parses answers for any cluster.
pub fn config(data: &[u8]) {
    if let Ok(config) = PluginConfig::parse(data) {
        let _ = config.settings_for("fuzz");
        let _ = config.settings_for("");
    }
}

/// Shared-data record bytes: decoding never panics, whatever decodes encodes back to the
/// same bytes (a record of the version before the hosts comes back in the current
/// version, and reads the same), and the header-only glance never disagrees with the full
/// decode.
pub fn record(data: &[u8]) {
    let glance = codec::glance(data);
    if let Ok(r) = codec::decode(data) {
        let bytes = codec::encode(&r);
        if data.get(1) == bytes.get(1) {
            assert_eq!(bytes, data, "round trip of {r:?}");
        } else {
            assert_eq!(codec::decode(&bytes).as_ref(), Ok(&r), "upgrade of {r:?}");
        }
        assert_eq!(glance, Some(codec::RecordHeader::of(&r)));
    }
}

/// A stored timeline: decoding never panics, whatever decodes encodes back to the same
/// bytes and shows fifteen minutes, and any stored bytes changed by a worker come out
/// readable and within their bound.
pub fn timeline(data: &[u8]) {
    const NOW_MS: u64 = 1_796_000_000_000;
    if let Some(t) = Timeline::decode(data) {
        assert_eq!(t.encode(), data, "round trip of {t:?}");
        assert_eq!(t.view(NOW_MS).len(), TIMELINE_BUCKETS);
    }
    let failed = Traffic {
        failures: 1,
        ..Traffic::default()
    };
    let changed = Timeline::with(data, |t| t.add(NOW_MS, &failed, State::Open));
    assert!(
        changed.len() <= timeline::MAX_BYTES,
        "{} bytes",
        changed.len()
    );
    assert!(Timeline::decode(&changed).is_some());
}

/// The control API's method and path. Input: one byte giving the method's length (mod 16),
/// the method, then the path. A refusal echoes no control character (no CR/LF to split a
/// log line or header) and stays short; a command names a breaker only if non-empty.
pub fn control_route(data: &[u8]) {
    let (method, path) = split_by_length(data, 16);
    let method = String::from_utf8_lossy(method);
    let path = String::from_utf8_lossy(path);
    match control::route(&method, &path) {
        Ok(command) => assert!(command.breaker() != Some(""), "{command:?}"),
        Err(e) => check_message(&e),
    }
}

/// A `PUT .../mode` body: parsing never panics, and a refusal's message carries no CR/LF.
pub fn mode_body(data: &[u8]) {
    if let Err(e) = control::parse_mode(data) {
        assert!(
            !e.message.contains(['\r', '\n']),
            "CR/LF in {:?}",
            e.message
        );
    }
}

/// The bearer token check. Input: one byte giving the configured token's length (mod 32),
/// the token, then the `Authorization` value. Allowed exactly when the value is
/// `Bearer <token>` and a token is configured; the constant-time compare is plain equality.
pub fn token(data: &[u8]) {
    let (token, header) = split_by_length(data, 32);
    let token = String::from_utf8_lossy(token);
    let allowed = control::authorize(Some(&token), Some(header)).is_ok();
    let expected = !token.is_empty() && header.strip_prefix(b"Bearer ") == Some(token.as_bytes());
    assert_eq!(allowed, expected, "token {token:?}, header {header:?}");
    assert_eq!(
        control::constant_time_eq(token.as_bytes(), header),
        token.as_bytes() == header
    );
    assert!(control::authorize(None, Some(header)).is_err());
}

/// The outcome classifier. Input: a control byte (which classifier, complete or not, gRPC
/// status or not), then the HTTP status, the response flags and the gRPC status as
/// little-endian integers (missing bytes read as zero). The quick success answer, when it
/// gives one, is the full answer with no flags set.
pub fn classifier(data: &[u8]) {
    let mut rd = Bytes(data);
    let control = rd.u8();
    let status = rd.u32();
    let flags = rd.u64();
    let grpc = rd.u32();
    let end = StreamEnd {
        status,
        flags,
        grpc_status: (control & 4 != 0).then_some(grpc),
    };
    let default = Classifier::default();
    let classifier = if control & 1 == 0 {
        &default
    } else {
        custom_classifier()
    };
    let _ = classifier.classify(end);
    let complete = control & 2 != 0;
    if let Some(quick) = classifier.success_without_flags(end.status, end.grpc_status, complete) {
        assert_eq!(
            quick,
            classifier.classify(StreamEnd { flags: 0, ..end }),
            "{end:?}"
        );
    }
}

/// An upstream's `Retry-After` value, as lossy UTF-8 (the host hands header values over as
/// text). A wait is never zero and never beyond what the format can say: ten digits of
/// seconds, or a date before the year 10000. A date already past gives no wait.
pub fn retry_after(data: &[u8]) {
    let value = String::from_utf8_lossy(data);
    // 10000-01-01T00:00:00Z, in milliseconds since the epoch.
    const LAST_DATE_MS: u64 = 253_402_300_800_000;
    const LONGEST_DELAY_MS: u64 = 9_999_999_999_000;
    for now_ms in [0, 1_000_000, 1_800_000_000_000] {
        if let Some(ms) = retry_after::parse(&value, now_ms) {
            assert!(ms > 0, "{value:?}");
            assert!(
                ms <= LAST_DATE_MS.max(LONGEST_DELAY_MS),
                "{value:?} -> {ms}"
            );
        }
    }
    if let Some(ms) = retry_after::parse(&value, u64::MAX) {
        assert!(
            ms <= LONGEST_DELAY_MS,
            "a date after the end of time: {value:?}"
        );
    }
}

/// The classifier of a config with custom lists, so the fuzzer also sees ignored codes
/// winning over failure codes and resets not counted.
fn custom_classifier() -> &'static Classifier {
    static CUSTOM: OnceLock<Classifier> = OnceLock::new();
    CUSTOM.get_or_init(|| {
        PluginConfig::parse(
            br#"{"default": {"failure_status": [429, "502-504"], "ignore_status": ["5xx"],
                "count_resets": false, "grpc_failure_codes": ["UNAVAILABLE", 13]}}"#,
        )
        .expect("the custom classifier's config parses")
        .default
        .classifier
    })
}

fn check_message(e: &control::ApiError) {
    assert!(
        !e.message.chars().any(char::is_control),
        "control character in {:?}",
        e.message
    );
    assert!(
        e.message.chars().count() <= MAX_MESSAGE_CHARS,
        "{} characters",
        e.message.chars().count()
    );
}

/// Splits after a length prefix: the first byte (mod `modulus`) says how many of the
/// following bytes make the first part.
fn split_by_length(data: &[u8], modulus: u8) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(n % modulus).min(rest.len()))
}

/// Little-endian integers off the front of the input; bytes past the end read as zero.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}
