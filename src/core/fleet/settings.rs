//! The plugin JSON's `fleet` block, as written ([`FleetDoc`]) and as checked
//! ([`FleetSettings`]). A refusal names the field, the rule and the value, like every other
//! field, because Envoy shows the operator one log line when it rejects a configuration.
//! Secrets are never in the JSON: only the names of environment variables that hold them.

use serde::Deserialize;

use super::etcd::grpc_service;
use super::record::valid_member;
use crate::core::config_error::{Check, ConfigError};
use crate::core::limits as l;

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
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Life of this Envoy's lease: how long a dead Envoy's probe slots stay taken.
    /// "2s" (etcd's minimum) to "5m", default "6s".
    #[schemars(regex(pattern = l::DURATION_PATTERN))]
    pub lease_ttl: Option<String>,
    /// This Envoy's name in the fleet. Default: the Envoy node id. 1 to 64 printable
    /// characters.
    pub member: Option<String>,
    /// How many members must have tripped on their own failures (within the breaker's
    /// window) before the breaker opens on every member; a member that trips alone opens
    /// only itself. 1 to 1000, default 2; 1 lets any one member open it everywhere. With
    /// fewer live members than this, all of them must agree.
    pub trip_quorum: Option<u32>,
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
    /// Members that must have tripped on their own before the fleet opens.
    pub trip_quorum: u32,
    /// Names of the environment variables with the etcd user and password.
    pub credentials_env: Option<(String, String)>,
}

impl FleetSettings {
    /// Checks the block; errors name `fleet.<field>`.
    pub fn compile(doc: &FleetDoc) -> Result<FleetSettings, ConfigError> {
        let check = Check {
            at: &|f| format!("fleet.{f}"),
        };
        let grpc_service = grpc_service(&doc.etcd_cluster).ok_or_else(|| {
            check.bad(
                "etcd_cluster",
                format!(
                    "must name an Envoy cluster in 1 to {} printable ASCII characters, but was {:?}",
                    l::MAX_ETCD_CLUSTER_BYTES,
                    doc.etcd_cluster
                ),
            )
        })?;
        let member = match &doc.member {
            Some(m) if !valid_member(m) => {
                return Err(check.bad(
                    "member",
                    format!(
                        "must be 1 to {} printable characters, but was {m:?}",
                        l::MAX_MEMBER_BYTES
                    ),
                ))
            }
            m => m.clone(),
        };
        Ok(FleetSettings {
            etcd_cluster: doc.etcd_cluster.clone(),
            grpc_service,
            prefix: prefix(&check, &doc.prefix)?,
            timeout_ms: check.duration("timeout", &doc.timeout, l::FLEET_TIMEOUT_MS)?,
            lease_ttl_ms: check.duration("lease_ttl", &doc.lease_ttl, l::FLEET_LEASE_TTL_MS)?,
            member,
            trip_quorum: check.within("trip_quorum", doc.trip_quorum, l::FLEET_TRIP_QUORUM)?,
            credentials_env: credentials_env(&check, doc)?,
        })
    }

    /// The lease TTL in whole seconds, as `LeaseGrant` takes it (rounded up).
    pub fn lease_ttl_secs(&self) -> i64 {
        self.lease_ttl_ms.div_ceil(1_000) as i64
    }
}

fn prefix(check: &Check, p: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/')
        || p.ends_with('/')
        || p.len() > l::MAX_FLEET_PREFIX_BYTES
        || p.contains("//")
        || !p.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(check.bad(
            "prefix",
            format!(
                "must start with \"/\", not end with \"/\", hold no \"//\" and be 2 to {} printable ASCII characters, but was {p:?}",
                l::MAX_FLEET_PREFIX_BYTES
            ),
        ));
    }
    Ok(p.to_string())
}

/// The names of the variables holding the etcd user and password: both or neither.
fn credentials_env(check: &Check, doc: &FleetDoc) -> Result<Option<(String, String)>, ConfigError> {
    let missing = |field, other| {
        Err(check.bad(
            field,
            format!("must be set when {other} is, but was missing"),
        ))
    };
    match (&doc.username_env, &doc.password_env) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) => {
            for (field, name) in [("username_env", u), ("password_env", p)] {
                if !env_name(name) {
                    return Err(check.bad(field, format!(
                        "must be an environment variable name (letters, digits and \"_\", not starting with a digit, at most {}), but was {name:?}",
                        l::MAX_ENV_NAME_BYTES
                    )));
                }
            }
            Ok(Some((u.clone(), p.clone())))
        }
        (Some(_), None) => missing("password_env", "username_env"),
        (None, Some(_)) => missing("username_env", "password_env"),
    }
}

fn env_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=l::MAX_ENV_NAME_BYTES).contains(&b.len())
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
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
        assert_eq!(s.trip_quorum, 2, "agreement of two members by default");
    }

    #[test]
    fn trip_quorum_is_a_whole_number_from_1_to_1000() {
        let with =
            |q: &str| format!(r#"{{"etcd_cluster": "etcd", "prefix": "/p", "trip_quorum": {q}}}"#);
        assert_eq!(parse(&with("1")).unwrap().trip_quorum, 1);
        assert_eq!(parse(&with("1000")).unwrap().trip_quorum, 1_000);
        assert_eq!(
            refused(&with("0")),
            "invalid plugin configuration: fleet.trip_quorum: must be between 1 and 1000, but was 0"
        );
        assert!(refused(&with("1001"))
            .contains("fleet.trip_quorum: must be between 1 and 1000, but was 1001"));
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
