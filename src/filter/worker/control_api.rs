//! The control API against the shared state: health, views, resets and mode overrides.
//! Views read the stored record, so every worker answers the same.

use crate::core::breaker::{self, Step};
use crate::core::control::{self, ApiError, Command};
use crate::core::history::{self, Event};
use crate::core::settings::Settings;
use crate::core::state::Record;
use crate::core::store;
use crate::core::view;

use super::super::host::Host;
use super::super::shared::{history_key, SharedData};
use super::Worker;

/// An answer of the control API: status, content type, body.
pub type ApiAnswer = (u32, &'static str, String);

impl Worker {
    /// Runs a control API command against the shared state; the caller has checked the
    /// token for commands that change anything.
    pub fn control(
        &mut self,
        host: &impl Host,
        command: &Command,
        body: &[u8],
        now_ms: u64,
    ) -> Result<ApiAnswer, ApiError> {
        let names = self.registered(host);
        if let Some(name) = command.breaker() {
            if !names.iter().any(|n| n == name) {
                return Err(ApiError::not_found(format!(
                    "no circuit breaker named {name:?}; known: {}",
                    names.join(", ")
                )));
            }
        }
        let json = |v: serde_json::Value| Ok((200, "application/json", v.to_string()));
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
                        let (record, settings, _) = self.current(host, name)?;
                        Some((name.clone(), record, settings))
                    })
                    .collect();
                let mut health = view::health(&rows, now_ms);
                if let Some(fleet) = self.fleet_view(host) {
                    health["fleet"] = fleet;
                }
                json(health)
            }
            Command::List => {
                let views: Vec<_> = names
                    .iter()
                    .filter_map(|n| self.view(host, n, now_ms))
                    .collect();
                let mut list = serde_json::json!({ "circuit_breakers": views });
                if let Some(fleet) = self.fleet_view(host) {
                    list["fleet"] = fleet;
                }
                json(list)
            }
            Command::Show(name) => json(self.view(host, name, now_ms).unwrap_or_default()),
            Command::Reset(name) => {
                self.change(host, name, now_ms, |r, s| breaker::reset(r, s, now_ms))?;
                json(self.view(host, name, now_ms).unwrap_or_default())
            }
            Command::ResetAll => {
                for name in &names {
                    self.change(host, name, now_ms, |r, s| breaker::reset(r, s, now_ms))?;
                }
                json(serde_json::json!({ "reset": names }))
            }
            Command::SetMode(name) => {
                let mode = control::parse_mode(body)?;
                self.change(host, name, now_ms, |r, s| {
                    breaker::set_mode(r, s, mode, now_ms)
                })?;
                json(self.view(host, name, now_ms).unwrap_or_default())
            }
        }
    }

    /// Whether control API changes are allowed for a caller offering `authorization`.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        control::authorize(self.token.as_deref(), authorization)
    }

    fn registered(&self, host: &impl Host) -> Vec<String> {
        let mut names = Worker::listed(host);
        names.sort();
        names
    }

    /// The record as stored now, with the breaker's settings and history.
    fn current(&mut self, host: &impl Host, name: &str) -> Option<(Record, Settings, Vec<Event>)> {
        let i = self.slot_for(host, name.as_bytes())?;
        let slot = self.slots.get(i)?;
        let record = store::load(&SharedData(host), &slot.key).ok()?.record;
        let history = match host.shared_data(&history_key(name)) {
            Ok(Some((bytes, _))) => history::read(&bytes),
            _ => Vec::new(),
        };
        Some((record, slot.settings.clone(), history))
    }

    fn view(&mut self, host: &impl Host, name: &str, now_ms: u64) -> Option<serde_json::Value> {
        let (record, settings, history) = self.current(host, name)?;
        let mut view = view::breaker(name, &record, &settings, &history, now_ms);
        if let Some(fleet) = self.fleet_breaker_view(host, name, settings.fleet) {
            view["fleet"] = fleet;
        }
        Some(view)
    }

    fn change(
        &mut self,
        host: &impl Host,
        name: &str,
        now_ms: u64,
        decide: impl Fn(&mut Record, &Settings) -> Step<()>,
    ) -> Result<(), ApiError> {
        let missing = || ApiError::not_found(format!("no circuit breaker named {name:?}"));
        let i = self.slot_for(host, name.as_bytes()).ok_or_else(missing)?;
        let slot = self.slots.get_mut(i).ok_or_else(missing)?;
        let mode_before = slot.last_seen.mode_override;
        if slot.write(host, now_ms, decide) {
            // An operator's change may move no state (a mode override) and still change
            // what every worker must do, and every Envoy of a fleet.
            slot.moved = true;
            slot.mode_unpublished |=
                slot.unpublished.is_none() && slot.last_seen.mode_override != mode_before;
            self.tell_others(host, i);
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "the shared state could not be updated; nothing was changed, try again",
            ))
        }
    }
}
