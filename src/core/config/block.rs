//! One settings block, merged over `default`, checked field by field into [`Settings`].

use super::l;
use super::{SettingsDoc, WindowTypeDoc};
use crate::core::config_error::{Check, ConfigError};
use crate::core::duration::Millis;
use crate::core::outcome::Classifier;
use crate::core::settings::Settings;
use crate::core::window::WindowSpec;

/// Checks one merged block; `at` names the field in the block that set it.
pub(super) fn compile_block(
    d: &SettingsDoc,
    at: &dyn Fn(&str) -> String,
) -> Result<Settings, ConfigError> {
    let check = Check { at };
    let (open_duration_ms, max_open_duration_ms) = open_times(&check, d)?;
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
        window: window(&check, d)?,
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
        half_open_max_duration_ms: half_open_max_duration(&check, d)?,
        recovery_duration_ms: check.duration(
            "recovery_duration",
            &d.recovery_duration,
            l::RECOVERY_DURATION_MS,
        )?,
        honor_retry_after: d.honor_retry_after.unwrap_or(l::HONOR_RETRY_AFTER),
        classifier: classifier(&check, d)?,
        mode: d.mode.unwrap_or_default(),
        exclude_paths: check.paths(d.exclude_paths.as_deref().unwrap_or_default())?,
        max_route_breakers: route_breakers(&check, d)?,
        fallback: d.fallback.as_ref().map(|f| check.fallback(f)).transpose()?,
        cache: d
            .fallback_cache
            .as_ref()
            .map(|c| check.cache(c))
            .transpose()?,
        store_failure: d.store_failure_mode.unwrap_or_default(),
        fleet: d.fleet.unwrap_or(l::FLEET_SHARED),
        probe: d
            .probe
            .as_ref()
            .map(|p| check.probe(p, open_duration_ms))
            .transpose()?,
    })
}

/// `open_duration`, and `max_open_duration`, which may not be shorter and defaults to the
/// larger of its own default and `open_duration`.
fn open_times(check: &Check, d: &SettingsDoc) -> Result<(u64, u64), ConfigError> {
    let open_ms = check.duration("open_duration", &d.open_duration, l::OPEN_DURATION_MS)?;
    let Some(text) = &d.max_open_duration else {
        return Ok((open_ms, open_ms.max(l::MAX_OPEN_DURATION_MS.default)));
    };
    let max_ms = check.duration(
        "max_open_duration",
        &Some(text.clone()),
        l::MAX_OPEN_DURATION_MS,
    )?;
    if max_ms < open_ms {
        return Err(check.bad(
            "max_open_duration",
            format!(
                "must not be shorter than open_duration ({}), but was {text:?}",
                Millis(open_ms)
            ),
        ));
    }
    Ok((open_ms, max_ms))
}

/// The window `window_type` names, with its own field's bound.
fn window(check: &Check, d: &SettingsDoc) -> Result<WindowSpec, ConfigError> {
    Ok(match d.window_type.unwrap_or_default() {
        WindowTypeDoc::Time => WindowSpec::Time {
            window_ms: check.duration("window", &d.window, l::WINDOW_MS)?,
        },
        WindowTypeDoc::Count => WindowSpec::Count {
            size: check.within("window_size", d.window_size, l::WINDOW_SIZE)?,
        },
    })
}

/// `half_open_max_duration`: 0 (wait forever) or at least its minimum.
fn half_open_max_duration(check: &Check, d: &SettingsDoc) -> Result<u64, ConfigError> {
    match check.duration(
        "half_open_max_duration",
        &d.half_open_max_duration,
        l::HALF_OPEN_MAX_DURATION_MS,
    )? {
        ms if ms > 0 && ms < l::HALF_OPEN_MAX_DURATION_MIN_MS => Err(check.bad(
            "half_open_max_duration",
            format!(
                "must be \"0s\" (off) or at least {}, but was {ms}ms",
                Millis(l::HALF_OPEN_MAX_DURATION_MIN_MS)
            ),
        )),
        ms => Ok(ms),
    }
}

/// Which calls count as failures: every field left unset keeps its default.
fn classifier(check: &Check, d: &SettingsDoc) -> Result<Classifier, ConfigError> {
    let base = Classifier::default();
    Ok(Classifier {
        failure_status: match &d.failure_status {
            Some(items) => check.statuses("failure_status", items)?,
            None => base.failure_status,
        },
        ignore_status: match &d.ignore_status {
            Some(items) => check.statuses("ignore_status", items)?,
            None => base.ignore_status,
        },
        connect_failures: d.count_connect_failures.unwrap_or(base.connect_failures),
        resets: d.count_resets.unwrap_or(base.resets),
        timeouts: d.count_timeouts.unwrap_or(base.timeouts),
        grpc_failure_codes: match &d.grpc_failure_codes {
            Some(codes) => check.grpc_codes(codes)?,
            None => base.grpc_failure_codes,
        },
    })
}

/// With `per_route`, the most route breakers; `max_route_breakers` alone means nothing.
fn route_breakers(check: &Check, d: &SettingsDoc) -> Result<Option<u32>, ConfigError> {
    match d.per_route {
        Some(true) => Ok(Some(check.within(
            "max_route_breakers",
            d.max_route_breakers,
            l::MAX_ROUTE_BREAKERS,
        )?)),
        _ => Ok(None),
    }
}
