//! The plugin JSON: parsed with serde, then checked field by field into [`Settings`] per
//! cluster. Every refusal names the field, the rule and the bad value, because Envoy only
//! shows the operator one log line when it rejects a configuration. The document's types
//! are in [`doc`], one block's checks in `block` and `check`.

use std::collections::HashMap;

mod block;
mod check;
pub mod doc;
mod probe;

use super::config_error::Check;
pub use super::config_error::ConfigError;
use super::fleet::settings::FleetSettings;
use super::limits as l;
use super::settings::Settings;
use block::compile_block;
pub use doc::*;

/// A checked webhook target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsTarget {
    pub cluster: String,
    pub path: String,
    pub timeout_ms: u64,
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
            if name.is_empty()
                || name.len() > l::MAX_CLUSTER_NAME_BYTES
                || name.chars().any(char::is_control)
            {
                return Err(ConfigError {
                    field: "clusters".into(),
                    problem: format!(
                        "cluster names must be 1 to {} printable characters, but got {name:?}",
                        l::MAX_CLUSTER_NAME_BYTES
                    ),
                });
            }
            let merged = block.over(&doc.default);
            // A field inside a block (`probe.path`) is set by whoever set the block.
            let at = |f: &str| {
                if block.sets(f.split('.').next().unwrap_or(f)) {
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
    if e.cluster.is_empty()
        || e.cluster.len() > l::MAX_CLUSTER_NAME_BYTES
        || e.cluster.chars().any(char::is_control)
    {
        return Err(check.bad(
            "cluster",
            format!("must name an Envoy cluster, but was {:?}", e.cluster),
        ));
    }
    if !e.path.starts_with('/')
        || e.path.len() > l::MAX_PATH_BYTES
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

#[cfg(test)]
mod tests;
