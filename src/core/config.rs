//! The plugin JSON: parsed with serde, then checked field by field into [`Settings`] per
//! cluster. Every refusal names the field, the rule and the bad value, because Envoy only
//! shows the operator one log line when it rejects a configuration.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;

use super::duration::{parse_millis, Millis};
use super::settings::Settings;

/// Why a configuration was refused: which field, and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, such as `clusters.auth.open_duration`.
    pub field: String,
    /// The rule that was broken, with the bad value.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid plugin configuration: {}", self.problem)
        } else {
            write!(
                f,
                "invalid plugin configuration: {}: {}",
                self.field, self.problem
            )
        }
    }
}

/// The plugin JSON as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigDoc {
    /// Settings for every cluster that has no entry of its own.
    #[serde(default)]
    pub default: SettingsDoc,
    /// Per-cluster overrides of `default`, field by field, keyed by Envoy cluster name.
    #[serde(default)]
    pub clusters: BTreeMap<String, SettingsDoc>,
}

/// One settings block; every field is optional because blocks override each other.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsDoc {
    /// Consecutive failures that open the breaker (0 to 10000; 0 switches the rule off).
    pub failure_threshold: Option<u32>,
    /// Failure share over the window that opens the breaker (0 to 1; 0 switches it off).
    pub failure_rate_threshold: Option<f64>,
    /// Calls the window must hold before the failure rate counts (1 to 1000000).
    pub minimum_requests: Option<u32>,
    /// Length of the sliding window for rates ("100ms" to "1h").
    pub window: Option<String>,
    /// Time open before half-open ("10ms" to "24h").
    pub open_duration: Option<String>,
    /// Probes in flight at once in half-open, across all workers (1 to 10000).
    pub half_open_max_requests: Option<u32>,
    /// Successful probes that close the breaker (1 to 10000).
    pub success_threshold: Option<u32>,
}

/// The checked configuration: settings for each named cluster and for all others.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub default: Settings,
    pub clusters: HashMap<String, Settings>,
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
        let default = doc.default.apply(&Settings::default(), "default")?;
        let mut clusters = HashMap::with_capacity(doc.clusters.len());
        for (name, block) in &doc.clusters {
            if name.is_empty() || name.len() > 200 {
                return Err(ConfigError {
                    field: "clusters".into(),
                    problem: format!(
                        "cluster names must be 1 to 200 bytes long, but one was {} bytes",
                        name.len()
                    ),
                });
            }
            let settings = block.apply(&default, &format!("clusters.{name}"))?;
            clusters.insert(name.clone(), settings);
        }
        Ok(PluginConfig { default, clusters })
    }

    /// The settings that govern `cluster`.
    pub fn settings_for(&self, cluster: &str) -> &Settings {
        self.clusters.get(cluster).unwrap_or(&self.default)
    }
}

impl SettingsDoc {
    /// Overrides `base` with the fields set here, checking each one.
    fn apply(&self, base: &Settings, at: &str) -> Result<Settings, ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let mut s = base.clone();
        if let Some(v) = self.failure_threshold {
            s.failure_threshold = within(&field("failure_threshold"), v, 0, 10_000)?;
        }
        if let Some(v) = self.failure_rate_threshold {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(
                    &field("failure_rate_threshold"),
                    format!("must be between 0 and 1 (0 switches the rule off), but was {v}"),
                ));
            }
            s.failure_rate_threshold = v;
        }
        if let Some(v) = self.minimum_requests {
            s.minimum_requests = within(&field("minimum_requests"), v, 1, 1_000_000)?;
        }
        if let Some(v) = &self.window {
            s.window_ms = duration_within(&field("window"), v, 100, 3_600_000)?;
        }
        if let Some(v) = &self.open_duration {
            s.open_duration_ms = duration_within(&field("open_duration"), v, 10, 86_400_000)?;
        }
        if let Some(v) = self.half_open_max_requests {
            s.half_open_max_requests = within(&field("half_open_max_requests"), v, 1, 10_000)?;
        }
        if let Some(v) = self.success_threshold {
            s.success_threshold = within(&field("success_threshold"), v, 1, 10_000)?;
        }
        Ok(s)
    }
}

fn bad(field: &str, problem: String) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem,
    }
}

fn within(field: &str, value: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(bad(
            field,
            format!("must be between {min} and {max}, but was {value}"),
        ))
    }
}

fn duration_within(field: &str, text: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let ms = parse_millis(text).map_err(|_| {
        bad(
            field,
            format!(
                "must be a duration like \"250ms\", \"30s\", \"5m\" or \"1h\", but was {text:?}"
            ),
        )
    })?;
    if (min..=max).contains(&ms) {
        Ok(ms)
    } else {
        Err(bad(
            field,
            format!(
                "must be between {} and {}, but was {text:?}",
                Millis(min),
                Millis(max)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(json.as_bytes())
    }

    fn refusal(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    const ISSUE_EXAMPLE: &str = r#"{
      "default": {
        "failure_threshold": 5, "failure_rate_threshold": 0.5, "minimum_requests": 20,
        "window": "10s", "open_duration": "60s", "half_open_max_requests": 1,
        "success_threshold": 1
      },
      "clusters": {
        "auth":    { "failure_threshold": 5, "open_duration": "60s" },
        "student": { "failure_threshold": 3, "open_duration": "30s",
                     "half_open_max_requests": 2, "success_threshold": 2 }
      }
    }"#;

    #[test]
    fn clusters_override_the_default_field_by_field() {
        let config = parse(ISSUE_EXAMPLE).unwrap();
        let student = config.settings_for("student");
        assert_eq!(student.failure_threshold, 3);
        assert_eq!(student.open_duration_ms, 30_000);
        assert_eq!(student.half_open_max_requests, 2);
        assert_eq!(student.success_threshold, 2);
        assert_eq!(student.window_ms, 10_000, "inherited from default");
        assert_eq!(student.minimum_requests, 20, "inherited from default");
    }

    #[test]
    fn unnamed_clusters_use_the_default_block() {
        let config = parse(r#"{"default": {"failure_threshold": 9}}"#).unwrap();
        assert_eq!(config.settings_for("anything").failure_threshold, 9);
        assert_eq!(config.settings_for("anything").open_duration_ms, 60_000);
    }

    #[test]
    fn an_empty_configuration_means_all_defaults() {
        assert_eq!(parse("").unwrap().default, Settings::default());
        assert_eq!(parse("  {} ").unwrap().default, Settings::default());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let msg = refusal(r#"{"clusters": {"auth": {"failure_treshold": 3}}}"#);
        assert!(msg.contains("clusters.auth"), "{msg}");
        assert!(msg.contains("failure_treshold"), "{msg}");
        let msg = refusal(r#"{"defaults": {}}"#);
        assert!(msg.contains("unknown field `defaults`"), "{msg}");
    }

    #[test]
    fn wrong_types_are_refused_with_their_path() {
        let msg = refusal(r#"{"default": {"failure_threshold": "5"}}"#);
        assert!(msg.contains("default.failure_threshold"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        let msg = refusal(r#"{"default": {"minimum_requests": -1}}"#);
        assert!(msg.contains("default.minimum_requests"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_the_rule_and_the_value() {
        assert_eq!(
            refusal(r#"{"clusters": {"student": {"success_threshold": 0}}}"#),
            "invalid plugin configuration: clusters.student.success_threshold: \
             must be between 1 and 10000, but was 0"
        );
        let msg = refusal(r#"{"default": {"failure_rate_threshold": 1.5}}"#);
        assert!(msg.contains("default.failure_rate_threshold"), "{msg}");
        assert!(msg.contains("but was 1.5"), "{msg}");
    }

    #[test]
    fn malformed_durations_are_refused_with_the_text_given() {
        let msg = refusal(r#"{"default": {"open_duration": "60 seconds"}}"#);
        assert!(msg.contains("default.open_duration"), "{msg}");
        assert!(msg.contains("\"60 seconds\""), "{msg}");
        let msg = refusal(r#"{"default": {"window": "5ms"}}"#);
        assert!(msg.contains("between 100ms and 1h"), "{msg}");
    }

    #[test]
    fn malformed_json_is_refused() {
        let msg = refusal(r#"{"default": {"failure_threshold": 5"#);
        assert!(msg.starts_with("invalid plugin configuration"), "{msg}");
        let msg = refusal(r#"{} trailing"#);
        assert!(msg.contains("trailing"), "{msg}");
    }

    #[test]
    fn a_bad_cluster_refuses_the_whole_document() {
        let msg = refusal(
            r#"{"clusters": {"auth": {"failure_threshold": 2}, "school": {"open_duration": "x"}}}"#,
        );
        assert!(msg.contains("clusters.school.open_duration"), "{msg}");
    }

    #[test]
    fn rules_can_be_switched_off_with_zero() {
        let config =
            parse(r#"{"default": {"failure_threshold": 0, "failure_rate_threshold": 0}}"#).unwrap();
        assert_eq!(config.default.failure_threshold, 0);
        assert_eq!(config.default.failure_rate_threshold, 0.0);
    }
}
