//! The plugin JSON: parsed with serde, then checked field by field into [`Settings`] per
//! cluster. Every refusal names the field, the rule and the bad value, because Envoy only
//! shows the operator one log line when it rejects a configuration.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::cache::CacheSettings;
pub use super::config_error::ConfigError;
use super::duration::{parse_millis, Millis};
use super::fallback::{Fallback, Template};
use super::fleet::settings::{FleetDoc, FleetSettings};
use super::limits::{self as l, Limit};
use super::outcome::{Classifier, StatusSet, GRPC_CODES};
use super::settings::{Mode, Settings, StoreFailure};
use super::window::WindowSpec;

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
    /// (optional; see "Fleet mode" in the README).
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
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    pub timeout: Option<String>,
}

/// A checked webhook target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsTarget {
    pub cluster: String,
    pub path: String,
    pub timeout_ms: u64,
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
            fn over(&self, base: &SettingsDoc) -> SettingsDoc {
                SettingsDoc { $( $field: self.$field.clone().or_else(|| base.$field.clone()), )* }
            }

            /// Whether this block sets `field`.
            fn sets(&self, field: &str) -> bool {
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
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
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
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    window: String,
    /// Calls in the count window. 1 to 1000, default 100.
    #[schemars(range(min = l::WINDOW_SIZE.min, max = l::WINDOW_SIZE.max))]
    window_size: u32,
    /// Time open after a first trip. "10ms" to "24h", default "60s".
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    open_duration: String,
    /// Open time multiplier per consecutive trip. 1 to 10, default 1 (no growth).
    #[schemars(range(min = l::BACKOFF_MULTIPLIER.min, max = l::BACKOFF_MULTIPLIER.max))]
    backoff_multiplier: f64,
    /// Cap on the open time (also for an upstream's Retry-After); the growth starts over
    /// after the breaker stays closed this long. "10ms" to "24h", at least `open_duration`;
    /// default the larger of "10m" and `open_duration`.
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
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
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    half_open_max_duration: String,
    /// After closing, admit a share of requests growing linearly from 0 to 100 % over this
    /// time, refusing the rest. "0s" (off, the default) to "1h".
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
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
}

/// Kind of window.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WindowTypeDoc {
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
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    pub max_age: Option<String>,
}

/// The checked configuration: settings for each named cluster and for all others.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub default: Settings,
    pub clusters: HashMap<String, Settings>,
    pub events: Option<EventsTarget>,
    /// Fleet mode, when the `fleet` block is given.
    pub fleet: Option<FleetSettings>,
}

impl PluginConfig {
    /// Parses and checks the plugin JSON; an empty configuration means all defaults.
    pub fn parse(json: &[u8]) -> Result<PluginConfig, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return PluginConfig::compile(PluginConfigDoc::default());
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let doc: PluginConfigDoc = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError {
                field: if field == "." { String::new() } else { field },
                problem: e.into_inner().to_string(),
            }
        })?;
        de.end().map_err(|e| ConfigError {
            field: String::new(),
            problem: e.to_string(),
        })?;
        PluginConfig::compile(doc)
    }

    /// Turns the parsed document into runtime settings, refusing the first bad field.
    pub fn compile(doc: PluginConfigDoc) -> Result<PluginConfig, ConfigError> {
        let default = compile_block(&doc.default, &|f| format!("default.{f}"))?;
        let mut clusters = HashMap::with_capacity(doc.clusters.len());
        for (name, block) in &doc.clusters {
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                return Err(ConfigError {
                    field: "clusters".into(),
                    problem: format!(
                        "cluster names must be 1 to 200 printable characters, but got {name:?}"
                    ),
                });
            }
            let merged = block.over(&doc.default);
            let at = |f: &str| {
                if block.sets(f) {
                    format!("clusters.{name}.{f}")
                } else {
                    format!("default.{f}")
                }
            };
            clusters.insert(name.clone(), compile_block(&merged, &at)?);
        }
        let events = doc.events.as_ref().map(compile_events).transpose()?;
        let fleet = doc.fleet.as_ref().map(FleetSettings::compile).transpose()?;
        Ok(PluginConfig {
            default,
            clusters,
            events,
            fleet,
        })
    }

    /// The settings that govern `cluster`.
    pub fn settings_for(&self, cluster: &str) -> &Settings {
        self.clusters.get(cluster).unwrap_or(&self.default)
    }
}

fn compile_events(e: &EventsDoc) -> Result<EventsTarget, ConfigError> {
    let check = Check {
        at: &|f| format!("events.{f}"),
    };
    if e.cluster.is_empty() || e.cluster.len() > 200 || e.cluster.chars().any(char::is_control) {
        return Err(check.bad(
            "cluster",
            format!("must name an Envoy cluster, but was {:?}", e.cluster),
        ));
    }
    if !e.path.starts_with('/')
        || e.path.len() > 200
        || e.path.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(check.bad(
            "path",
            format!("must be a path starting with \"/\", but was {:?}", e.path),
        ));
    }
    Ok(EventsTarget {
        cluster: e.cluster.clone(),
        path: e.path.clone(),
        timeout_ms: check.duration("timeout", &e.timeout, l::EVENTS_TIMEOUT_MS)?,
    })
}

/// Checks one merged block; `at` names the field in the block that set it.
fn compile_block(d: &SettingsDoc, at: &dyn Fn(&str) -> String) -> Result<Settings, ConfigError> {
    let base = Settings::default();
    let check = Check { at };
    let open_duration_ms =
        check.duration("open_duration", &d.open_duration, l::OPEN_DURATION_MS)?;
    let max_open_duration_ms = match &d.max_open_duration {
        None => open_duration_ms.max(l::MAX_OPEN_DURATION_MS.default),
        Some(text) => {
            let ms = check.duration(
                "max_open_duration",
                &Some(text.clone()),
                l::MAX_OPEN_DURATION_MS,
            )?;
            if ms < open_duration_ms {
                return Err(check.bad(
                    "max_open_duration",
                    format!(
                        "must not be shorter than open_duration ({}), but was {text:?}",
                        Millis(open_duration_ms)
                    ),
                ));
            }
            ms
        }
    };
    let window = match d.window_type.unwrap_or(WindowTypeDoc::Time) {
        WindowTypeDoc::Time => WindowSpec::Time {
            window_ms: check.duration("window", &d.window, l::WINDOW_MS)?,
        },
        WindowTypeDoc::Count => WindowSpec::Count {
            size: check.within("window_size", d.window_size, l::WINDOW_SIZE)?,
        },
    };
    let half_open_max_duration_ms = match check.duration(
        "half_open_max_duration",
        &d.half_open_max_duration,
        l::HALF_OPEN_MAX_DURATION_MS,
    )? {
        ms if ms > 0 && ms < l::HALF_OPEN_MAX_DURATION_MIN_MS => {
            return Err(check.bad(
                "half_open_max_duration",
                format!(
                    "must be \"0s\" (off) or at least {}, but was {ms}ms",
                    Millis(l::HALF_OPEN_MAX_DURATION_MIN_MS)
                ),
            ))
        }
        ms => ms,
    };
    Ok(Settings {
        failure_threshold: check.within(
            "failure_threshold",
            d.failure_threshold,
            l::FAILURE_THRESHOLD,
        )?,
        failure_rate_threshold: check.within(
            "failure_rate_threshold",
            d.failure_rate_threshold,
            l::FAILURE_RATE_THRESHOLD,
        )?,
        slow_call_duration_ms: check.duration(
            "slow_call_duration",
            &d.slow_call_duration,
            l::SLOW_CALL_DURATION_MS,
        )?,
        slow_call_rate_threshold: check.within(
            "slow_call_rate_threshold",
            d.slow_call_rate_threshold,
            l::SLOW_CALL_RATE_THRESHOLD,
        )?,
        minimum_requests: check.within(
            "minimum_requests",
            d.minimum_requests,
            l::MINIMUM_REQUESTS,
        )?,
        trip_min_hosts: check.within("trip_min_hosts", d.trip_min_hosts, l::TRIP_MIN_HOSTS)?,
        window,
        open_duration_ms,
        backoff_multiplier: check.within(
            "backoff_multiplier",
            d.backoff_multiplier,
            l::BACKOFF_MULTIPLIER,
        )?,
        max_open_duration_ms,
        jitter: check.within("jitter", d.jitter, l::JITTER)?,
        half_open_max_requests: check.within(
            "half_open_max_requests",
            d.half_open_max_requests,
            l::HALF_OPEN_MAX_REQUESTS,
        )?,
        success_threshold: check.within(
            "success_threshold",
            d.success_threshold,
            l::SUCCESS_THRESHOLD,
        )?,
        half_open_max_duration_ms,
        recovery_duration_ms: check.duration(
            "recovery_duration",
            &d.recovery_duration,
            l::RECOVERY_DURATION_MS,
        )?,
        honor_retry_after: d.honor_retry_after.unwrap_or(base.honor_retry_after),
        classifier: Classifier {
            failure_status: match &d.failure_status {
                Some(items) => check.statuses("failure_status", items)?,
                None => base.classifier.failure_status,
            },
            ignore_status: match &d.ignore_status {
                Some(items) => check.statuses("ignore_status", items)?,
                None => base.classifier.ignore_status,
            },
            connect_failures: d.count_connect_failures.unwrap_or(true),
            resets: d.count_resets.unwrap_or(true),
            timeouts: d.count_timeouts.unwrap_or(true),
            grpc_failure_codes: match &d.grpc_failure_codes {
                Some(codes) => check.grpc_codes(codes)?,
                None => base.classifier.grpc_failure_codes,
            },
        },
        mode: d.mode.unwrap_or_default(),
        exclude_paths: check.paths(d.exclude_paths.as_deref().unwrap_or_default())?,
        max_route_breakers: match d.per_route {
            Some(true) => Some(check.within(
                "max_route_breakers",
                d.max_route_breakers,
                l::MAX_ROUTE_BREAKERS,
            )?),
            _ => None,
        },
        fallback: d.fallback.as_ref().map(|f| check.fallback(f)).transpose()?,
        cache: d
            .fallback_cache
            .as_ref()
            .map(|c| check.cache(c))
            .transpose()?,
        store_failure: d.store_failure_mode.unwrap_or_default(),
        fleet: d.fleet.unwrap_or(l::FLEET_SHARED),
    })
}

/// Field checks that know how to name the field they check.
struct Check<'a> {
    at: &'a dyn Fn(&str) -> String,
}

impl Check<'_> {
    fn bad(&self, field: &str, problem: String) -> ConfigError {
        ConfigError {
            field: (self.at)(field),
            problem,
        }
    }

    /// `v` (or the default when unset), refused unless it lies within the limit.
    fn within<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        field: &str,
        v: Option<T>,
        limit: Limit<T>,
    ) -> Result<T, ConfigError> {
        let Limit { min, max, default } = limit;
        match v {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(v) => Err(self.bad(
                field,
                format!("must be between {min} and {max}, but was {v}"),
            )),
        }
    }

    fn duration(
        &self,
        field: &str,
        v: &Option<String>,
        limit: Limit<u64>,
    ) -> Result<u64, ConfigError> {
        let Limit { min, max, default } = limit;
        let Some(text) = v else {
            return Ok(default);
        };
        let ms = parse_millis(text).map_err(|_| {
            self.bad(field, format!("must be a duration like \"250ms\", \"30s\", \"5m\" or \"1h\", but was {text:?}"))
        })?;
        if (min..=max).contains(&ms) {
            Ok(ms)
        } else {
            Err(self.bad(
                field,
                format!(
                    "must be between {} and {}, but was {text:?}",
                    Millis(min),
                    Millis(max)
                ),
            ))
        }
    }

    fn statuses(&self, field: &str, items: &[StatusItemDoc]) -> Result<StatusSet, ConfigError> {
        let mut set = StatusSet::empty();
        for item in items {
            let range = match item {
                StatusItemDoc::Code(c) => StatusSet::parse_item(&c.to_string()),
                StatusItemDoc::Text(t) => StatusSet::parse_item(t),
            };
            let Some((low, high)) = range else {
                let shown = match item {
                    StatusItemDoc::Code(c) => c.to_string(),
                    StatusItemDoc::Text(t) => format!("{t:?}"),
                };
                return Err(self.bad(field, format!(
                    "items must be status codes from 100 to 599, ranges like \"502-504\" or classes like \"5xx\", but one was {shown}"
                )));
            };
            set = set.with_range(low, high);
        }
        Ok(set)
    }

    fn grpc_codes(&self, codes: &[GrpcCodeDoc]) -> Result<u32, ConfigError> {
        let mut bits = 0u32;
        for code in codes {
            let n = match code {
                GrpcCodeDoc::Number(n) => Some(*n),
                GrpcCodeDoc::Name(name) => GRPC_CODES
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(name))
                    .map(|i| i as u32),
            };
            match n {
                Some(n @ 1..=16) => bits |= 1 << n,
                _ => {
                    return Err(self.bad("grpc_failure_codes", format!(
                        "items must be gRPC status codes 1 to 16 or their names (UNAVAILABLE, INTERNAL, ...), but one was {}",
                        match code { GrpcCodeDoc::Number(n) => n.to_string(), GrpcCodeDoc::Name(s) => format!("{s:?}") }
                    )))
                }
            }
        }
        Ok(bits)
    }

    fn paths(&self, paths: &[String]) -> Result<Vec<String>, ConfigError> {
        if paths.len() > l::MAX_EXCLUDE_PATHS {
            return Err(self.bad(
                "exclude_paths",
                format!(
                    "may hold at most {} prefixes, but held {}",
                    l::MAX_EXCLUDE_PATHS,
                    paths.len()
                ),
            ));
        }
        for p in paths {
            if !p.starts_with('/') || p.len() > 200 || p.chars().any(char::is_control) {
                return Err(self.bad("exclude_paths", format!("items must be path prefixes starting with \"/\" (at most 200 characters), but one was {p:?}")));
            }
        }
        Ok(paths.to_vec())
    }

    fn fallback(&self, f: &FallbackDoc) -> Result<Fallback, ConfigError> {
        let status = self
            .within("fallback", f.status, l::FALLBACK_STATUS)
            .map_err(|e| e.prefixed("status"))?;
        let body = f.body.clone().unwrap_or_default();
        if body.len() > l::MAX_FALLBACK_BODY_BYTES {
            return Err(self.bad(
                "fallback",
                format!(
                    "body must be at most {} bytes, but was {} bytes",
                    l::MAX_FALLBACK_BODY_BYTES,
                    body.len()
                ),
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in f.headers.iter().flatten() {
            let lower = name.to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token
                || ["content-length", "transfer-encoding", "connection"].contains(&lower.as_str())
            {
                return Err(self.bad(
                    "fallback",
                    format!("header name {name:?} is not a header Envoy lets a filter set"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(self.bad(
                    "fallback",
                    format!("header {name:?} holds a control character"),
                ));
            }
            headers.push((lower, Template::parse(value)));
        }
        Ok(Fallback {
            status,
            headers,
            body: Template::parse(&body),
        })
    }

    fn cache(&self, c: &CacheDoc) -> Result<CacheSettings, ConfigError> {
        let field = "fallback_cache";
        Ok(CacheSettings {
            max_entries: self
                .within(field, c.max_entries, l::CACHE_MAX_ENTRIES)
                .map_err(|e| e.prefixed("max_entries"))? as usize,
            max_bytes: self
                .within(field, c.max_bytes, l::CACHE_MAX_BYTES)
                .map_err(|e| e.prefixed("max_bytes"))? as usize,
            max_age_ms: self
                .duration(field, &c.max_age, l::CACHE_MAX_AGE_MS)
                .map_err(|e| e.prefixed("max_age"))?,
        })
    }
}

#[cfg(test)]
mod tests;
