//! Every bound and default of the plugin JSON, written once. The parser checks against
//! these, the generated JSON Schema carries them, and [`Settings::default`] takes its
//! values from them, so the three cannot drift apart; a test holds the doc comments to
//! them as well.
//!
//! [`Settings::default`]: super::settings::Settings

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
pub const OPEN_DURATION_MS: Limit<u64> = limit(10, 24 * HOUR, MINUTE);
pub const BACKOFF_MULTIPLIER: Limit<f64> = limit(1.0, 10.0, 1.0);
/// The default is the larger of this and `open_duration`.
pub const MAX_OPEN_DURATION_MS: Limit<u64> = limit(10, 24 * HOUR, 10 * MINUTE);
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
/// Whether a breaker joins the fleet when a `fleet` block exists (`"fleet": false` keeps
/// it local).
pub const FLEET_SHARED: bool = true;
