//! The plugin JSON's `fleet` block, as written ([`FleetDoc`]) and as checked
//! ([`FleetSettings`]). A refusal names the field, the rule and the value, like every other
//! field, because Envoy shows the operator one log line when it rejects a configuration.
//! Secrets are never in the JSON: only the names of environment variables that hold them.

use serde::Deserialize;

use super::etcd::grpc_service;
use super::record::valid_member;
use crate::core::config_error::ConfigError;
use crate::core::duration::{parse_millis, Millis};

/// The `fleet` block: share this Envoy's breakers with every Envoy using the same prefix,
/// through etcd v3.
#[derive(schemars::JsonSchema, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetDoc {
    /// The Envoy cluster (HTTP/2) that reaches etcd's gRPC port. 1 to 120 printable
    /// ASCII characters.
    pub etcd_cluster: String,
    /// Keys live under it and nowhere else; every Envoy with the same prefix is one fleet.
    /// Starts with "/", does not end with "/", at most 200 printable ASCII characters.
    #[schemars(regex(pattern = "^/"))]
    pub prefix: String,
    /// Every etcd call's timeout. "1ms" to "60s", default "500ms"; never zero.
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    pub timeout: Option<String>,
    /// Life of this Envoy's lease: how long a dead Envoy's probe slots stay taken.
    /// "2s" (etcd's minimum) to "5m", default "6s".
    #[schemars(regex(pattern = r"^[0-9]{1,12}(ms|s|m|h)$"))]
    pub lease_ttl: Option<String>,
    /// This Envoy's name in the fleet. Default: the Envoy node id. 1 to 64 printable
    /// characters.
    pub member: Option<String>,
    /// Host environment variable holding the etcd user name (list it in
    /// `vm_config.environment_variables.host_env_keys`). Set both or neither.
    pub username_env: Option<String>,
    /// Host environment variable holding the etcd password. Set both or neither.
    pub password_env: Option<String>,
}

/// The checked `fleet` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    pub etcd_cluster: String,
    /// The serialized `GrpcService` for the gRPC host calls, made once here.
    pub grpc_service: String,
    pub prefix: String,
    pub timeout_ms: u64,
    pub lease_ttl_ms: u64,
    pub member: Option<String>,
    /// Names of the environment variables with the etcd user and password.
    pub credentials_env: Option<(String, String)>,
}

/// The default of `fleet.timeout`.
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// The default of `fleet.lease_ttl`.
pub const DEFAULT_LEASE_TTL_MS: u64 = 6_000;

impl FleetSettings {
    /// Checks the block; errors name `fleet.<field>`.
    pub fn compile(doc: &FleetDoc) -> Result<FleetSettings, ConfigError> {
        let grpc_service = grpc_service(&doc.etcd_cluster).ok_or_else(|| {
            bad(
                "etcd_cluster",
                format!(
                    "must name an Envoy cluster in 1 to 120 printable ASCII characters, but was {:?}",
                    doc.etcd_cluster
                ),
            )
        })?;
        let p = &doc.prefix;
        if !p.starts_with('/')
            || p.ends_with('/')
            || p.len() > 200
            || p.contains("//")
            || !p.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad(
                "prefix",
                format!(
                    "must start with \"/\", not end with \"/\", hold no \"//\" and be 2 to 200 printable ASCII characters, but was {p:?}"
                ),
            ));
        }
        let member = match &doc.member {
            Some(m) if !valid_member(m) => {
                return Err(bad(
                    "member",
                    format!("must be 1 to 64 printable characters, but was {m:?}"),
                ))
            }
            m => m.clone(),
        };
        let credentials_env = match (&doc.username_env, &doc.password_env) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                for (field, name) in [("username_env", u), ("password_env", p)] {
                    if !env_name(name) {
                        return Err(bad(field, format!(
                            "must be an environment variable name (letters, digits and \"_\", not starting with a digit, at most 64), but was {name:?}"
                        )));
                    }
                }
                Some((u.clone(), p.clone()))
            }
            (Some(_), None) => {
                return Err(bad(
                    "password_env",
                    "must be set when username_env is, but was missing".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "username_env",
                    "must be set when password_env is, but was missing".into(),
                ))
            }
        };
        Ok(FleetSettings {
            etcd_cluster: doc.etcd_cluster.clone(),
            grpc_service,
            prefix: p.clone(),
            timeout_ms: duration("timeout", &doc.timeout, 1, 60_000, DEFAULT_TIMEOUT_MS)?,
            lease_ttl_ms: duration(
                "lease_ttl",
                &doc.lease_ttl,
                2_000,
                300_000,
                DEFAULT_LEASE_TTL_MS,
            )?,
            member,
            credentials_env,
        })
    }

    /// The lease TTL in whole seconds, as `LeaseGrant` takes it (rounded up).
    pub fn lease_ttl_secs(&self) -> i64 {
        self.lease_ttl_ms.div_ceil(1_000) as i64
    }
}

fn bad(field: &str, problem: String) -> ConfigError {
    ConfigError {
        field: format!("fleet.{field}"),
        problem,
    }
}

fn env_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn duration(
    field: &str,
    v: &Option<String>,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(text) = v else {
        return Ok(default);
    };
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

    fn parse(json: &str) -> Result<FleetSettings, ConfigError> {
        let doc: FleetDoc = serde_json::from_str(json).map_err(|e| ConfigError {
            field: String::new(),
            problem: e.to_string(),
        })?;
        FleetSettings::compile(&doc)
    }

    fn refused(json: &str) -> String {
        match parse(json) {
            Err(e) => e.to_string(),
            Ok(s) => format!("accepted: {s:?}"),
        }
    }

    #[test]
    fn the_issues_example_is_accepted_with_defaults() {
        let s = parse(r#"{"etcd_cluster": "etcd", "prefix": "/envoy-circuit-breaker/school-gateway", "timeout": "500ms"}"#)
            .unwrap();
        assert_eq!(s.timeout_ms, 500);
        assert_eq!(s.lease_ttl_ms, 6_000);
        assert_eq!(s.lease_ttl_secs(), 6);
        assert_eq!(s.grpc_service.as_bytes(), b"\x0a\x06\x0a\x04etcd");
        assert_eq!(s.credentials_env, None);
    }

    #[test]
    fn credentials_come_from_named_environment_variables() {
        let s = parse(r#"{"etcd_cluster": "etcd", "prefix": "/p", "username_env": "ETCD_USER", "password_env": "ETCD_PASSWORD"}"#)
            .unwrap();
        assert_eq!(
            s.credentials_env,
            Some(("ETCD_USER".into(), "ETCD_PASSWORD".into()))
        );
    }

    #[test]
    fn a_zero_timeout_is_refused_naming_field_rule_and_value() {
        assert_eq!(
            refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "timeout": "0s"}"#),
            "invalid plugin configuration: fleet.timeout: must be between 1ms and 60s, but was \"0s\""
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["", "p", "/", "/p/", "/a//b", "/with space", "/é"] {
            let msg = refused(&format!(r#"{{"etcd_cluster": "etcd", "prefix": {p:?}}}"#));
            assert!(
                msg.starts_with("invalid plugin configuration: fleet.prefix: must start"),
                "{p}: {msg}"
            );
        }
        let long = format!("/{}", "a".repeat(200));
        assert!(refused(&format!(
            r#"{{"etcd_cluster": "etcd", "prefix": "{long}"}}"#
        ))
        .contains("fleet.prefix"));
    }

    #[test]
    fn a_cluster_name_envoy_could_misparse_is_refused() {
        let msg = refused(&format!(
            r#"{{"etcd_cluster": "{}", "prefix": "/p"}}"#,
            "e".repeat(121)
        ));
        assert!(
            msg.contains("fleet.etcd_cluster: must name an Envoy cluster"),
            "{msg}"
        );
        assert!(refused(r#"{"etcd_cluster": "", "prefix": "/p"}"#).contains("fleet.etcd_cluster"));
    }

    #[test]
    fn lease_ttl_cannot_go_under_etcds_minimum() {
        assert!(
            refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "lease_ttl": "1s"}"#)
                .contains("fleet.lease_ttl: must be between 2s and 300s, but was \"1s\"")
        );
        let s =
            parse(r#"{"etcd_cluster": "etcd", "prefix": "/p", "lease_ttl": "2500ms"}"#).unwrap();
        assert_eq!(s.lease_ttl_secs(), 3);
    }

    #[test]
    fn credentials_need_both_names_and_valid_ones() {
        assert!(
            refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "username_env": "U"}"#)
                .contains("fleet.password_env: must be set when username_env is")
        );
        assert!(
            refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "password_env": "P"}"#)
                .contains("fleet.username_env")
        );
        assert!(refused(
            r#"{"etcd_cluster": "etcd", "prefix": "/p", "username_env": "1U", "password_env": "P"}"#
        )
        .contains("fleet.username_env: must be an environment variable name"));
        assert!(refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "username_env": "U", "password_env": "P-W"}"#)
            .contains("fleet.password_env"));
    }

    #[test]
    fn member_names_are_bounded() {
        assert!(refused(&format!(
            r#"{{"etcd_cluster": "etcd", "prefix": "/p", "member": "{}"}}"#,
            "m".repeat(65)
        ))
        .contains("fleet.member: must be 1 to 64"));
        assert!(
            refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "member": ""}"#)
                .contains("fleet.member")
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        assert!(
            refused(r#"{"etcd_cluster": "etcd", "prefix": "/p", "password": "x"}"#)
                .contains("unknown field")
        );
        assert!(refused(r#"{"etcd_cluster": "etcd"}"#).contains("missing field `prefix`"));
    }
}
