//! The validated, runtime form of one cluster's breaker settings: plain numbers in
//! milliseconds and ready-made sets, so the decision code never parses or checks anything
//! on the request path.

use super::cache::CacheSettings;
use super::fallback::Fallback;
use super::limits as l;
use super::outcome::Classifier;
use super::probe_spec::ProbeSettings;
use super::window::WindowSpec;

/// How a breaker acts on its decisions.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse while open (the default).
    #[default]
    Enforce,
    /// Decide and count as in `Enforce`, but let every request through: a safe roll-out.
    DryRun,
    /// Refuse everything, whatever the upstream does.
    ForcedOpen,
    /// Let everything through and count nothing.
    Disabled,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry_run",
            Mode::ForcedOpen => "forced_open",
            Mode::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// The byte that stands for a mode override wherever it is stored: 0 for none, else
    /// its place in [`Mode::ALL`] plus one.
    pub fn code_of(mode: Option<Mode>) -> u8 {
        mode.and_then(|m| Mode::ALL.iter().position(|x| *x == m))
            .map_or(0, |i| i as u8 + 1)
    }

    /// Inverse of [`Mode::code_of`]; `None` for a byte no mode stands for.
    pub fn from_code(code: u8) -> Option<Option<Mode>> {
        match code {
            0 => Some(None),
            c => Mode::ALL.get(usize::from(c) - 1).map(|m| Some(*m)),
        }
    }

    pub const ALL: [Mode; 4] = [
        Mode::Enforce,
        Mode::DryRun,
        Mode::ForcedOpen,
        Mode::Disabled,
    ];
}

/// What a request meets when the state store cannot be updated (every compare-and-swap
/// lost, or a host error) while its breaker was last seen closed.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// Let it through, untracked: availability first (the default).
    #[default]
    Pass,
    /// Refuse it: protection first.
    Refuse,
}

/// How one breaker decides to trip, recovers, and answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Consecutive failures that open the breaker; 0 switches the rule off.
    pub failure_threshold: u32,
    /// Failure share (0 to 1) over the window that opens the breaker; 0 switches it off.
    pub failure_rate_threshold: f64,
    /// A call slower than this counts as slow.
    pub slow_call_duration_ms: u64,
    /// Slow share (0 to 1) over the window that opens the breaker; 0 switches it off.
    pub slow_call_rate_threshold: f64,
    /// Calls the window must hold before either rate is trusted.
    pub minimum_requests: u32,
    /// Distinct hosts the calls behind a trip must come from (or every host known); 1
    /// trips on any host's failures.
    pub trip_min_hosts: u32,
    pub window: WindowSpec,
    /// Time open after a first trip.
    pub open_duration_ms: u64,
    /// Growth of the open time per consecutive trip; 1 keeps it flat.
    pub backoff_multiplier: f64,
    /// Cap on the open time, and the time closed after which the growth starts over.
    pub max_open_duration_ms: u64,
    /// Fraction by which each open time is randomly shortened or lengthened.
    pub jitter: f64,
    /// Probes in flight at once in half-open, across all workers.
    pub half_open_max_requests: u32,
    /// Successful probes that close the breaker again.
    pub success_threshold: u32,
    /// Longest stay in half-open before giving up and opening again; 0 waits forever.
    pub half_open_max_duration_ms: u64,
    /// After closing, the time over which admitted traffic ramps from 0 to 100 %; 0 is off.
    pub recovery_duration_ms: u64,
    /// Open for as long as an upstream's `Retry-After` on a 429 or 503 asks.
    pub honor_retry_after: bool,
    pub classifier: Classifier,
    pub mode: Mode,
    /// Path prefixes that are never counted and never refused.
    pub exclude_paths: Vec<String>,
    /// When set, one breaker per route name inside the cluster, at most this many.
    pub max_route_breakers: Option<u32>,
    /// A custom answer while open; `None` answers with the default JSON error.
    pub fallback: Option<Fallback>,
    /// Serve the last good answer to a GET while open.
    pub cache: Option<CacheSettings>,
    /// Pass or refuse, for a breaker last seen closed, when the store gives up.
    pub store_failure: StoreFailure,
    /// With fleet mode on: whether this breaker's decisions go through etcd.
    pub fleet: bool,
    /// The breaker's own health probe, sent instead of admitting users while half-open.
    pub probe: Option<ProbeSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            failure_threshold: l::FAILURE_THRESHOLD.default,
            failure_rate_threshold: l::FAILURE_RATE_THRESHOLD.default,
            slow_call_duration_ms: l::SLOW_CALL_DURATION_MS.default,
            slow_call_rate_threshold: l::SLOW_CALL_RATE_THRESHOLD.default,
            minimum_requests: l::MINIMUM_REQUESTS.default,
            trip_min_hosts: l::TRIP_MIN_HOSTS.default,
            window: WindowSpec::Time {
                window_ms: l::WINDOW_MS.default,
            },
            open_duration_ms: l::OPEN_DURATION_MS.default,
            backoff_multiplier: l::BACKOFF_MULTIPLIER.default,
            max_open_duration_ms: l::MAX_OPEN_DURATION_MS.default,
            jitter: l::JITTER.default,
            half_open_max_requests: l::HALF_OPEN_MAX_REQUESTS.default,
            success_threshold: l::SUCCESS_THRESHOLD.default,
            half_open_max_duration_ms: l::HALF_OPEN_MAX_DURATION_MS.default,
            recovery_duration_ms: l::RECOVERY_DURATION_MS.default,
            honor_retry_after: l::HONOR_RETRY_AFTER,
            classifier: Classifier::default(),
            mode: Mode::default(),
            exclude_paths: Vec::new(),
            max_route_breakers: None,
            fallback: None,
            cache: None,
            store_failure: StoreFailure::default(),
            fleet: l::FLEET_SHARED,
            probe: None,
        }
    }
}

impl Settings {
    /// Whether a call that took `elapsed_ms` counts as slow.
    pub fn is_slow(&self, elapsed_ms: u64) -> bool {
        self.slow_call_rate_threshold > 0.0 && elapsed_ms >= self.slow_call_duration_ms
    }

    /// Whether `path` is excluded from the breaker.
    pub fn excludes(&self, path: &[u8]) -> bool {
        self.exclude_paths
            .iter()
            .any(|prefix| path.starts_with(prefix.as_bytes()))
    }

    /// The shortest time any trip rule keeps the breaker open: the first open time at the
    /// low edge of the jitter band.
    pub fn shortest_open_ms(&self) -> u64 {
        let low = (self.open_duration_ms as f64 * (1.0 - self.jitter)).floor() as u64;
        low.clamp(1, self.max_open_duration_ms.max(1))
    }

    /// How long to stay open after the `trips_in_row`-th trip in a row. `draw` (0 to 1)
    /// places the open time inside the jitter band.
    pub fn open_time(&self, trips_in_row: u32, draw: f64) -> u64 {
        let growth = self
            .backoff_multiplier
            .powi(trips_in_row.saturating_sub(1).min(100_000) as i32);
        let base = (self.open_duration_ms as f64 * growth).min(self.max_open_duration_ms as f64);
        let spread = 1.0 + self.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        ((base * spread).round() as u64).clamp(1, self.max_open_duration_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff() -> Settings {
        Settings {
            open_duration_ms: 1_000,
            backoff_multiplier: 2.0,
            max_open_duration_ms: 10_000,
            ..Settings::default()
        }
    }

    #[test]
    fn open_time_grows_per_trip_up_to_the_cap() {
        let s = backoff();
        let times: Vec<u64> = (1..=6).map(|n| s.open_time(n, 0.5)).collect();
        assert_eq!(times, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    }

    #[test]
    fn a_flat_multiplier_keeps_the_open_time() {
        let s = Settings {
            open_duration_ms: 30_000,
            backoff_multiplier: 1.0,
            ..Settings::default()
        };
        assert_eq!(s.open_time(1, 0.5), 30_000);
        assert_eq!(s.open_time(9, 0.5), 30_000);
    }

    #[test]
    fn jitter_spreads_the_open_time_both_ways() {
        let s = Settings {
            jitter: 0.2,
            ..backoff()
        };
        assert_eq!(s.open_time(1, 0.0), 800);
        assert_eq!(s.open_time(1, 1.0), 1_200);
        assert_eq!(s.open_time(5, 1.0), 10_000, "never past the cap");
    }

    proptest! {
        #[test]
        fn open_time_stays_within_the_jitter_band_and_the_cap(
            trips in 1u32..100, draw in 0.0f64..=1.0, jitter in 0.0f64..=0.5,
            mult in 1.0f64..10.0,
        ) {
            let s = Settings { jitter, backoff_multiplier: mult, ..backoff() };
            let t = s.open_time(trips, draw) as f64;
            let base = (1_000.0 * mult.powi(trips as i32 - 1)).min(10_000.0);
            prop_assert!(t <= 10_000.0);
            prop_assert!(t >= (base * (1.0 - jitter)).floor() - 1.0);
        }
    }

    proptest! {
        #[test]
        fn no_open_time_is_shorter_than_the_shortest(
            trips in 1u32..100, draw in 0.0f64..=1.0, jitter in 0.0f64..=0.5,
            mult in 1.0f64..10.0,
        ) {
            let s = Settings { jitter, backoff_multiplier: mult, ..backoff() };
            prop_assert!(s.open_time(trips, draw) >= s.shortest_open_ms());
        }
    }

    #[test]
    fn slow_calls_only_count_when_the_rule_is_on() {
        let mut s = Settings {
            slow_call_duration_ms: 500,
            ..Settings::default()
        };
        assert!(!s.is_slow(10_000));
        s.slow_call_rate_threshold = 0.5;
        assert!(s.is_slow(500));
        assert!(!s.is_slow(499));
    }

    #[test]
    fn exclusions_match_path_prefixes() {
        let s = Settings {
            exclude_paths: vec!["/health".into(), "/schools/ping".into()],
            ..Settings::default()
        };
        assert!(s.excludes(b"/health"));
        assert!(s.excludes(b"/healthz?x=1"));
        assert!(s.excludes(b"/schools/ping"));
        assert!(!s.excludes(b"/schools/1"));
    }
}
