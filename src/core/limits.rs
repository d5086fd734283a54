//! Every bound and default of the plugin JSON, written once: the breaker's settings, the
//! `events` and `fleet` blocks and the names and paths they hold. The parser checks
//! against these, the generated JSON Schema carries them, and [`Settings::default`] and
//! [`Classifier::default`] take their values from them, so none can drift apart; tests
//! hold the doc comments to them as well. The defaults of the enumerated fields (`mode`,
//! `window_type`, `store_failure_mode`) are their types' `#[default]` variants.
//!
//! [`Settings::default`]: super::settings::Settings
//! [`Classifier::default`]: super::outcome::Classifier

use super::window::MAX_CALLS;

/// The accepted range of a field and its value when unset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit<T> {
    pub min: T,
    pub max: T,
    pub default: T,
}

const fn limit<T>(min: T, max: T, default: T) -> Limit<T> {
    Limit { min, max, default }
}

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

pub const FAILURE_THRESHOLD: Limit<u32> = limit(0, 10_000, 5);
pub const FAILURE_RATE_THRESHOLD: Limit<f64> = limit(0.0, 1.0, 0.5);
pub const SLOW_CALL_DURATION_MS: Limit<u64> = limit(1, HOUR, MINUTE);
pub const SLOW_CALL_RATE_THRESHOLD: Limit<f64> = limit(0.0, 1.0, 0.0);
pub const MINIMUM_REQUESTS: Limit<u32> = limit(1, 1_000_000, 20);
pub const TRIP_MIN_HOSTS: Limit<u32> = limit(1, 1_000, 2);
pub const WINDOW_MS: Limit<u64> = limit(100, HOUR, 10 * SECOND);
pub const WINDOW_SIZE: Limit<u32> = limit(1, MAX_CALLS, 100);
/// A short first open time that doubles on each trip in a row up to a minute (as APISIX and
/// Envoy's outlier ejection do): a brief overload is let back in seconds after it ends, a
/// long outage is still probed only once a minute.
pub const OPEN_DURATION_MS: Limit<u64> = limit(10, 24 * HOUR, 5 * SECOND);
pub const BACKOFF_MULTIPLIER: Limit<f64> = limit(1.0, 10.0, 2.0);
/// The default is the larger of this and `open_duration`.
pub const MAX_OPEN_DURATION_MS: Limit<u64> = limit(10, 24 * HOUR, MINUTE);
pub const JITTER: Limit<f64> = limit(0.0, 0.5, 0.0);
pub const HALF_OPEN_MAX_REQUESTS: Limit<u32> = limit(1, 10_000, 1);
pub const SUCCESS_THRESHOLD: Limit<u32> = limit(1, 10_000, 1);
/// 0 waits forever; anything else must be at least [`HALF_OPEN_MAX_DURATION_MIN_MS`].
pub const HALF_OPEN_MAX_DURATION_MS: Limit<u64> = limit(0, HOUR, MINUTE);
pub const HALF_OPEN_MAX_DURATION_MIN_MS: u64 = 100;
pub const RECOVERY_DURATION_MS: Limit<u64> = limit(0, HOUR, 0);
pub const MAX_ROUTE_BREAKERS: Limit<u32> = limit(1, 256, 16);
pub const MAX_EXCLUDE_PATHS: usize = 64;
pub const FALLBACK_STATUS: Limit<u32> = limit(200, 599, 503);
pub const MAX_FALLBACK_BODY_BYTES: usize = 65_536;
pub const CACHE_MAX_ENTRIES: Limit<u32> = limit(1, 10_000, 100);
pub const CACHE_MAX_BYTES: Limit<u64> = limit(1, 67_108_864, 1_048_576);
pub const CACHE_MAX_AGE_MS: Limit<u64> = limit(SECOND, 24 * HOUR, 5 * MINUTE);
pub const EVENTS_TIMEOUT_MS: Limit<u64> = limit(1, MINUTE, 5 * SECOND);
/// `probe.timeout`: at most `probe.interval` and `open_duration` as well.
pub const PROBE_TIMEOUT_MS: Limit<u64> = limit(1, MINUTE, SECOND);
/// `probe.interval`: the timer ticks every 100 ms, so a shorter one could not be kept.
pub const PROBE_INTERVAL_MS: Limit<u64> = limit(100, HOUR, 5 * SECOND);
/// Most extra headers one probe sends.
pub const MAX_PROBE_HEADERS: usize = 16;
/// Longest probe header value, and longest `probe.authority`.
pub const MAX_PROBE_HEADER_BYTES: usize = 1_024;
/// Whether a breaker joins the fleet when a `fleet` block exists (`"fleet": false` keeps
/// it local).
pub const FLEET_SHARED: bool = true;

/// A duration is `<digits><unit>` with at most this many digits, so no amount overflows.
pub const DURATION_DIGITS: usize = 12;
/// The JSON Schema's pattern for every duration field ("250ms", "30s", "5m", "1h"); its
/// digit count is [`DURATION_DIGITS`].
pub const DURATION_PATTERN: &str = r"^[0-9]{1,12}(ms|s|m|h)$";
/// Longest name of a cluster, as a `clusters` key or `events.cluster`.
/// A breaker's timeline: buckets of this length, and as many as make fifteen minutes.
pub const TIMELINE_BUCKET_MS: u64 = 10 * SECOND;
pub const TIMELINE_BUCKETS: usize = 90;
/// How often a worker adds what it counted to a busy breaker's timeline: a tenth of a
/// bucket, so a count lands at most this late, and a busy breaker costs one write a second.
pub const TIMELINE_WRITE_EVERY_MS: u64 = SECOND;
pub const MAX_CLUSTER_NAME_BYTES: usize = 200;
/// Longest path: `events.path` and each of `exclude_paths`.
pub const MAX_PATH_BYTES: usize = 200;

/// `honor_retry_after` when unset.
pub const HONOR_RETRY_AFTER: bool = false;
/// `count_connect_failures` when unset.
pub const COUNT_CONNECT_FAILURES: bool = true;
/// `count_resets` when unset.
pub const COUNT_RESETS: bool = true;
/// `count_timeouts` when unset.
pub const COUNT_TIMEOUTS: bool = true;
/// `failure_status` when unset: the 5xx class.
pub const FAILURE_STATUS: (u16, u16) = (500, 599);
/// `grpc_failure_codes` when unset: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and
/// UNAVAILABLE.
pub const GRPC_FAILURE_CODES: [u32; 4] = [4, 8, 13, 14];

/// `fleet.timeout`: every etcd call's; never zero, since a call without a timeout waits
/// forever on a frozen etcd.
pub const FLEET_TIMEOUT_MS: Limit<u64> = limit(1, MINUTE, 500);
/// `fleet.lease_ttl`: etcd grants nothing under 2 s.
pub const FLEET_LEASE_TTL_MS: Limit<u64> = limit(2 * SECOND, 5 * MINUTE, 6 * SECOND);
/// `fleet.trip_quorum`: how many members must have tripped on their own failures before
/// the breaker opens in the whole fleet; 1 lets any one member open it everywhere.
pub const FLEET_TRIP_QUORUM: Limit<u32> = limit(1, 1_000, 2);
/// Longest `fleet.etcd_cluster`: its serialized `GrpcService` must keep every length in
/// one varint byte under 0x80 to be valid UTF-8 (see `fleet::etcd::grpc_service`).
pub const MAX_ETCD_CLUSTER_BYTES: usize = 120;
/// Longest `fleet.prefix`.
pub const MAX_FLEET_PREFIX_BYTES: usize = 200;
/// Longest `fleet.member` (and member name in a fleet record): Envoy node ids are usually
/// pod or host names, well under this.
pub const MAX_MEMBER_BYTES: usize = 64;
/// Longest name of the environment variables `fleet.username_env` and `fleet.password_env`.
pub const MAX_ENV_NAME_BYTES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_duration_pattern_allows_as_many_digits_as_the_parser() {
        assert!(DURATION_PATTERN.contains(&format!("{{1,{DURATION_DIGITS}}}")));
    }
}
