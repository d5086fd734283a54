//! The control API against the shared state: health, views, resets and mode overrides.
//! Views read the stored record, so every worker answers the same.

use crate::core::breaker::{self, Step};
use crate::core::control::{self, ApiError, Command};
use crate::core::history::{self, Event};
use crate::core::probe;
use crate::core::settings::Settings;
use crate::core::state::Record;
use crate::core::store;
use crate::core::timeline;
use crate::core::view;

use crate::filter::host::Host;
use crate::filter::shared::{history_key, timeline_key, SharedData};

use super::breakers::Breakers;
use super::fleet::Fleet;

/// An answer of the control API: status, content type, body.
pub type ApiAnswer = (u32, &'static str, String);

/// The names of every breaker in the process, sorted.
pub fn registered(host: &impl Host) -> Vec<String> {
    let mut names = Breakers::listed(host);
    names.sort();
    names
}

/// Refuses a command naming a breaker that is not among `names`.
pub fn check(command: &Command, names: &[String]) -> Result<(), ApiError> {
    match command.breaker() {
        Some(name) if !names.iter().any(|n| n == name) => Err(ApiError::not_found(format!(
            "no circuit breaker named {name:?}; known: {}",
            names.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// Makes the change a command asks for (nothing for the views); returns the breakers it
/// changed, for the caller to tell the other workers and the fleet, with the outcome.
pub fn change(
    host: &impl Host,
    breakers: &mut Breakers,
    command: &Command,
    body: &[u8],
    names: &[String],
    now_ms: u64,
) -> (Vec<usize>, Result<(), ApiError>) {
    let mut changed = Vec::new();
    let result = match command {
        Command::Reset(name) => write(host, breakers, name, now_ms, &mut changed, |r, s| {
            breaker::reset(r, s, now_ms)
        }),
        Command::ResetAll => names.iter().try_for_each(|name| {
            write(host, breakers, name, now_ms, &mut changed, |r, s| {
                breaker::reset(r, s, now_ms)
            })
        }),
        Command::SetMode(name) => control::parse_mode(body).and_then(|mode| {
            write(host, breakers, name, now_ms, &mut changed, |r, s| {
                breaker::set_mode(r, s, mode, now_ms)
            })
        }),
        Command::Dashboard
        | Command::Health
        | Command::List
        | Command::Show(_)
        | Command::History(_) => Ok(()),
    };
    (changed, result)
}

/// The answer to a command, once its change (if any) is made and told.
pub fn answer(
    host: &impl Host,
    breakers: &mut Breakers,
    fleet: Option<&Fleet>,
    command: &Command,
    names: &[String],
    now_ms: u64,
) -> Result<ApiAnswer, ApiError> {
    let json = |v: serde_json::Value| Ok((200, "application/json", v.to_string()));
    let fleet_view = || fleet.map(|f| f.view(host));
    match command {
        Command::Dashboard => Ok((
            200,
            "text/html; charset=utf-8",
            control::DASHBOARD_HTML.to_string(),
        )),
        Command::Health => {
            let rows: Vec<_> = names
                .iter()
                .filter_map(|name| {
                    let (record, settings, _) = current(host, breakers, name)?;
                    Some((name.clone(), record, settings))
                })
                .collect();
            let mut health = view::health(&rows, now_ms);
            if let Some(fleet) = fleet_view() {
                health["fleet"] = fleet;
            }
            json(health)
        }
        Command::List => {
            let views: Vec<_> = names
                .iter()
                .filter_map(|n| breaker_view(host, breakers, fleet, n, now_ms))
                .collect();
            let mut list = serde_json::json!({ "circuit_breakers": views });
            if let Some(fleet) = fleet_view() {
                list["fleet"] = fleet;
            }
            json(list)
        }
        Command::ResetAll => json(serde_json::json!({ "reset": names })),
        Command::History(name) => json(history_view(host, name, now_ms)),
        Command::Show(name) | Command::Reset(name) | Command::SetMode(name) => {
            json(breaker_view(host, breakers, fleet, name, now_ms).unwrap_or_default())
        }
    }
}

/// The record as stored now, with the breaker's settings and history.
fn current(
    host: &impl Host,
    breakers: &mut Breakers,
    name: &str,
) -> Option<(Record, Settings, Vec<Event>)> {
    let i = breakers.named(host, name.as_bytes())?;
    let breaker = breakers.get(i)?;
    let record = store::load(&SharedData(host), &breaker.key).ok()?.record;
    Some((record, breaker.settings.clone(), transitions(host, name)))
}

/// The breaker's kept transitions, newest first.
fn transitions(host: &impl Host, name: &str) -> Vec<Event> {
    match host.shared_data(&history_key(name)) {
        Ok(Some((bytes, _))) => history::read(&bytes),
        _ => Vec::new(),
    }
}

fn breaker_view(
    host: &impl Host,
    breakers: &mut Breakers,
    fleet: Option<&Fleet>,
    name: &str,
    now_ms: u64,
) -> Option<serde_json::Value> {
    let (record, settings, history) = current(host, breakers, name)?;
    let mut view = view::breaker(name, &record, &settings, &history, now_ms);
    if let Some(p) = &settings.probe {
        let last = super::probes::last_probe(host, name);
        view["probe"] = probe::view(&record, p, last.as_ref(), now_ms);
    }
    if let Some(fleet) = fleet {
        view["fleet"] = fleet.breaker_view(host, name, record.state, &settings, now_ms);
    }
    Some(view)
}

/// A breaker's last fifteen minutes: its buckets and its transitions.
fn history_view(host: &impl Host, name: &str, now_ms: u64) -> serde_json::Value {
    let stored = match host.shared_data(&timeline_key(name)) {
        Ok(Some((bytes, _))) => Some(bytes),
        _ => None,
    };
    timeline::answer(name, stored.as_deref(), &transitions(host, name), now_ms)
}

fn write(
    host: &impl Host,
    breakers: &mut Breakers,
    name: &str,
    now_ms: u64,
    changed: &mut Vec<usize>,
    decide: impl Fn(&mut Record, &Settings) -> Step<()>,
) -> Result<(), ApiError> {
    let missing = || ApiError::not_found(format!("no circuit breaker named {name:?}"));
    let i = breakers.named(host, name.as_bytes()).ok_or_else(missing)?;
    let breaker = breakers.get_mut(i).ok_or_else(missing)?;
    let mode_before = breaker.last_seen.mode_override;
    if breaker.write(host, now_ms, decide) {
        // An operator's change may move no state (a mode override) and still change
        // what every worker must do, and every Envoy of a fleet.
        breaker.moved = true;
        breaker.mode_unpublished |=
            breaker.unpublished.is_none() && breaker.last_seen.mode_override != mode_before;
        changed.push(i);
        Ok(())
    } else {
        Err(ApiError::unavailable(
            "the shared state could not be updated; nothing was changed, try again",
        ))
    }
}
