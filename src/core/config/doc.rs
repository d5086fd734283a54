//! The plugin JSON as the user writes it: serde types whose doc comments and attributes
//! are also the JSON Schema (`make schema`). Bounds come from [`limits`](super::l); the
//! checks that turn these into settings are in the parent module.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::l;
use crate::core::fleet::settings::FleetDoc;
use crate::core::probe_spec::ProbeMethod;
use crate::core::settings::{Mode, StoreFailure};

/// The plugin JSON as written by the user.
#[derive(schemars::JsonSchema, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigDoc {
    /// Settings for every cluster that has no entry of its own.
    #[serde(default)]
    pub default: SettingsDoc,
    /// Per-cluster overrides of `default`, field by field, keyed by Envoy cluster name.
    #[serde(default)]
    pub clusters: BTreeMap<String, SettingsDoc>,
    /// Where to POST a JSON event for every transition (optional).
    #[serde(default)]
    pub events: Option<EventsDoc>,
    /// Share every breaker's decisions with the other Envoys of a fleet through etcd v3
    /// (optional; see "Fleet mode" in the manual).
    #[serde(default)]
    pub fleet: Option<FleetDoc>,
}

/// A webhook for transitions: an Envoy cluster and a path on it.
#[derive(schemars::JsonSchema, Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsDoc {
    /// The Envoy cluster the events go to (it must exist in Envoy's configuration).
    pub cluster: String,
    /// The path POSTed to, starting with "/".
    #[schemars(regex(pattern = "^/"))]
    pub path: String,
    /// How long one delivery may take. "1ms" to "60s", default "5s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// Defines [`SettingsDoc`] (every field optional, since blocks override each other) with
/// the field-by-field merge and the "which block set it" lookup that error paths need.
macro_rules! settings_doc {
    ($( $(#[$meta:meta])* $field:ident : $ty:ty, )*) => {
        /// One settings block: every field is optional, since a cluster's block overrides
        /// `default` field by field and `default` overrides the built-in defaults.
        #[derive(schemars::JsonSchema)]
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SettingsDoc {
            $( $(#[$meta])* pub $field: Option<$ty>, )*
        }

        impl SettingsDoc {
            /// This block's fields, falling back to `base` for those it does not set.
            pub(super) fn over(&self, base: &SettingsDoc) -> SettingsDoc {
                SettingsDoc { $( $field: self.$field.clone().or_else(|| base.$field.clone()), )* }
            }

            /// Whether this block sets `field`.
            pub(super) fn sets(&self, field: &str) -> bool {
                match field {
                    $( stringify!($field) => self.$field.is_some(), )*
                    _ => false,
                }
            }
        }
    };
}

settings_doc! {
    /// Consecutive failures that open the breaker. 0 to 10000, default 5; 0 switches the rule off.
    #[schemars(range(min = l::FAILURE_THRESHOLD.min, max = l::FAILURE_THRESHOLD.max))]
    failure_threshold: u32,
    /// Failure share over the window that opens the breaker, once the window holds
    /// `minimum_requests` calls. 0 to 1, default 0.5; 0 switches the rule off.
    #[schemars(range(min = l::FAILURE_RATE_THRESHOLD.min, max = l::FAILURE_RATE_THRESHOLD.max))]
    failure_rate_threshold: f64,
    /// A call slower than this (request start to response end) counts as slow.
    /// "1ms" to "1h", default "60s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    slow_call_duration: String,
    /// Slow share over the window that opens the breaker. 0 to 1, default 0 (off).
    #[schemars(range(min = l::SLOW_CALL_RATE_THRESHOLD.min, max = l::SLOW_CALL_RATE_THRESHOLD.max))]
    slow_call_rate_threshold: f64,
    /// Calls the window must hold before either rate counts. 1 to 1000000, default 20.
    #[schemars(range(min = l::MINIMUM_REQUESTS.min, max = l::MINIMUM_REQUESTS.max))]
    minimum_requests: u32,
    /// Distinct hosts of the cluster the failures (or slow calls) behind a trip must come
    /// from, within the window: fewer do not trip, since a bad host is outlier
    /// detection's to eject. A cluster whose hosts all failed, or that has one host,
    /// trips as with 1, and so do failures with no host. 1 to 1000, default 2; 1 trips
    /// on any host's failures.
    #[schemars(range(min = l::TRIP_MIN_HOSTS.min, max = l::TRIP_MIN_HOSTS.max))]
    trip_min_hosts: u32,
    /// `time` (a sliding window of `window`, 10 buckets) or `count` (the last `window_size`
    /// calls). Default `time`.
    window_type: WindowTypeDoc,
    /// Length of the time window. "100ms" to "1h", default "10s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    window: String,
    /// Calls in the count window. 1 to 1000, default 100.
    #[schemars(range(min = l::WINDOW_SIZE.min, max = l::WINDOW_SIZE.max))]
    window_size: u32,
    /// Time open after a first trip. "10ms" to "24h", default "5s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    open_duration: String,
    /// Open time multiplier per consecutive trip. 1 to 10, default 2 (1: no growth).
    #[schemars(range(min = l::BACKOFF_MULTIPLIER.min, max = l::BACKOFF_MULTIPLIER.max))]
    backoff_multiplier: f64,
    /// Cap on the open time (also for an upstream's Retry-After); the growth starts over
    /// after the breaker stays closed this long. "10ms" to "24h", at least `open_duration`;
    /// default the larger of "60s" and `open_duration`.
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    max_open_duration: String,
    /// Each open time is randomly lengthened or shortened by up to this fraction, so
    /// instances do not probe in lockstep. 0 to 0.5, default 0.
    #[schemars(range(min = l::JITTER.min, max = l::JITTER.max))]
    jitter: f64,
    /// Probes in flight at once in half-open, across all workers. 1 to 10000, default 1.
    #[schemars(range(min = l::HALF_OPEN_MAX_REQUESTS.min, max = l::HALF_OPEN_MAX_REQUESTS.max))]
    half_open_max_requests: u32,
    /// Successful probes that close the breaker; one failed probe reopens it. 1 to 10000, default 1.
    #[schemars(range(min = l::SUCCESS_THRESHOLD.min, max = l::SUCCESS_THRESHOLD.max))]
    success_threshold: u32,
    /// Longest stay in half-open before opening again, so a lost probe cannot wedge the
    /// breaker. "0s" (wait forever) or "100ms" to "1h", default "60s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    half_open_max_duration: String,
    /// After closing, admit a share of requests growing linearly from 0 to 100 % over this
    /// time, refusing the rest. "0s" (off, the default) to "1h".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    recovery_duration: String,
    /// Open for as long as an upstream's Retry-After on a 429 or 503 asks (capped by
    /// `max_open_duration`). Default false.
    honor_retry_after: bool,
    /// HTTP statuses that count as failures: codes, ranges and classes such as
    /// `[429, "502-504", "5xx"]`. Default `["5xx"]`.
    failure_status: Vec<StatusItemDoc>,
    /// HTTP statuses that count neither way (they win over `failure_status`). Default none.
    ignore_status: Vec<StatusItemDoc>,
    /// Whether connection failures (and no healthy host) count as failures. Default true;
    /// false makes them neutral.
    count_connect_failures: bool,
    /// Whether upstream resets count as failures. Default true.
    count_resets: bool,
    /// Whether upstream timeouts count as failures. Default true.
    count_timeouts: bool,
    /// For gRPC calls: the `grpc-status` codes that count as failures, by name or number.
    /// Default UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL.
    grpc_failure_codes: Vec<GrpcCodeDoc>,
    /// `enforce` (default), `dry_run` (decide and count, refuse nothing), `forced_open`
    /// (refuse everything) or `disabled` (pass and count nothing).
    mode: Mode,
    /// Path prefixes that are never counted and never refused, such as health checks.
    /// Each starts with "/"; at most 64.
    #[schemars(length(max = l::MAX_EXCLUDE_PATHS))]
    exclude_paths: Vec<String>,
    /// One breaker per route name inside the cluster instead of one for the cluster.
    /// Default false.
    per_route: bool,
    /// Most route breakers one cluster may have; further routes share the cluster's
    /// breaker. 1 to 256, default 16.
    #[schemars(range(min = l::MAX_ROUTE_BREAKERS.min, max = l::MAX_ROUTE_BREAKERS.max))]
    max_route_breakers: u32,
    /// A custom answer while open, instead of the default JSON error.
    fallback: FallbackDoc,
    /// Keep the last good answers to GET requests and serve them while open.
    fallback_cache: CacheDoc,
    /// When the shared state cannot be updated (16 lost compare-and-swaps, or a host error)
    /// and the breaker was last seen closed: `pass` (default) lets the request through
    /// untracked, `refuse` refuses it. Open or half-open breakers always refuse then.
    store_failure_mode: StoreFailure,
    /// With a `fleet` block: whether this breaker's decisions are shared with the fleet.
    /// Default true; false keeps this breaker local.
    fleet: bool,
    /// The breaker's own health probe: when the open time ends it calls this path on the
    /// cluster itself instead of letting users through, and closes after
    /// `success_threshold` passing probes in a row. Default none (users probe).
    probe: ProbeDoc,
}

/// A health probe of the cluster, sent by the breaker itself while half-open.
#[derive(schemars::JsonSchema, Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDoc {
    /// The path probed, starting with "/", such as "/health" (at most 200 characters).
    /// Choose one that exercises the service's dependencies: a path that answers while the
    /// real work fails closes the breaker only for it to trip again.
    #[schemars(regex(pattern = "^/"))]
    pub path: String,
    /// The method. Default `GET`.
    pub method: Option<ProbeMethod>,
    /// Extra request headers: names are HTTP tokens (not pseudo-headers, `host`, or
    /// hop-by-hop headers), values printable, at most 1024 bytes. At most 16.
    pub headers: Option<BTreeMap<String, String>>,
    /// The `:authority` sent (at most 1024 bytes). Default the cluster's name.
    pub authority: Option<String>,
    /// How long one probe may take before it counts as timed out, which reopens the
    /// breaker. "1ms" to "60s", default "1s"; no longer than `interval` or `open_duration`.
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Statuses that pass: codes, ranges and classes such as `[200, "2xx"]`; anything else
    /// fails. Default `["2xx"]`; never empty.
    pub expect_status: Option<Vec<StatusItemDoc>>,
    /// Time from one probe to the next while half-open: after one that passed (below
    /// `success_threshold`) or one that could not be sent. "100ms" to "1h", default "5s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    pub interval: Option<String>,
}

/// Kind of window.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WindowTypeDoc {
    #[default]
    Time,
    Count,
}

/// A status code (`429`), a range (`"502-504"`) or a class (`"5xx"`).
#[derive(schemars::JsonSchema, Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusItemDoc {
    Code(u16),
    Text(String),
}

/// A gRPC status code by number (`14`) or name (`"UNAVAILABLE"`).
#[derive(schemars::JsonSchema, Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GrpcCodeDoc {
    Number(u32),
    Name(String),
}

/// A custom answer while open; `{cluster}` and `{retry_after}` are filled in.
#[derive(schemars::JsonSchema, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackDoc {
    /// HTTP status. 200 to 599, default 503.
    #[schemars(range(min = l::FALLBACK_STATUS.min, max = l::FALLBACK_STATUS.max))]
    pub status: Option<u32>,
    /// Body. At most 64 KiB, default empty.
    #[schemars(length(max = l::MAX_FALLBACK_BODY_BYTES))]
    pub body: Option<String>,
    /// Extra headers. `content-type` defaults to application/json; `retry-after` is added
    /// unless set here.
    pub headers: Option<BTreeMap<String, String>>,
}

/// Bounds of the answer cache, per worker and breaker.
#[derive(schemars::JsonSchema, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDoc {
    /// Paths remembered. 1 to 10000, default 100.
    #[schemars(range(min = l::CACHE_MAX_ENTRIES.min, max = l::CACHE_MAX_ENTRIES.max))]
    pub max_entries: Option<u32>,
    /// Bytes remembered. 1 to 67108864, default 1048576.
    #[schemars(range(min = l::CACHE_MAX_BYTES.min, max = l::CACHE_MAX_BYTES.max))]
    pub max_bytes: Option<u64>,
    /// Oldest answer served. "1s" to "24h", default "5m".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    pub max_age: Option<String>,
}
