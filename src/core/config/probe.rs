//! The checks of a `probe` block: what a health probe may send, how long it may take and
//! what it must answer, each refusal naming the field, the rule and the value.

use super::l;
use super::ProbeDoc;
use crate::core::config_error::{Check, ConfigError};
use crate::core::duration::Millis;
use crate::core::probe_spec::ProbeSettings;

/// Headers a probe may not set: pseudo-headers and `host` come from `path`, `method` and
/// `authority`; hop-by-hop and length headers are Envoy's to write.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
    "proxy-connection",
];

impl Check<'_> {
    /// A `probe` block, for a breaker whose first open time is `open_ms`.
    pub(super) fn probe(&self, p: &ProbeDoc, open_ms: u64) -> Result<ProbeSettings, ConfigError> {
        if !p.path.starts_with('/')
            || p.path.len() > l::MAX_PATH_BYTES
            || p.path.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(self.bad(
                "probe.path",
                format!(
                    "must be a path starting with \"/\" (at most {} characters, no spaces), but was {:?}",
                    l::MAX_PATH_BYTES,
                    p.path
                ),
            ));
        }
        let interval_ms = self.duration("probe.interval", &p.interval, l::PROBE_INTERVAL_MS)?;
        let timeout_ms = self.duration("probe.timeout", &p.timeout, l::PROBE_TIMEOUT_MS)?;
        for (name, limit_ms) in [("interval", interval_ms), ("open_duration", open_ms)] {
            if timeout_ms > limit_ms {
                return Err(self.bad(
                    "probe.timeout",
                    format!(
                        "must not be longer than {name} ({}), but was {}",
                        Millis(limit_ms),
                        Millis(timeout_ms)
                    ),
                ));
            }
        }
        let expect_status = match &p.expect_status {
            Some(items) if items.is_empty() => {
                return Err(self.bad(
                    "probe.expect_status",
                    "must name at least one status, but was []".into(),
                ))
            }
            Some(items) => self.statuses("probe.expect_status", items)?,
            None => crate::core::outcome::StatusSet::empty().with_range(200, 299),
        };
        Ok(ProbeSettings {
            path: p.path.clone(),
            method: p.method.unwrap_or_default(),
            headers: self.probe_headers(p)?,
            authority: self.authority(p)?,
            timeout_ms,
            expect_status,
            interval_ms,
        })
    }

    fn probe_headers(&self, p: &ProbeDoc) -> Result<Vec<(String, String)>, ConfigError> {
        let given = p.headers.iter().flatten();
        if given.clone().count() > l::MAX_PROBE_HEADERS {
            return Err(self.bad(
                "probe.headers",
                format!(
                    "may hold at most {} headers, but held {}",
                    l::MAX_PROBE_HEADERS,
                    given.count()
                ),
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in given {
            let lower = name.to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(self.bad(
                    "probe.headers",
                    format!("{name:?} is not a header name a probe may set"),
                ));
            }
            let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
            if value.len() > l::MAX_PROBE_HEADER_BYTES || !printable {
                return Err(self.bad(
                    "probe.headers",
                    format!(
                        "the value of {name:?} must be printable ASCII of at most {} bytes, but was {value:?}",
                        l::MAX_PROBE_HEADER_BYTES
                    ),
                ));
            }
            headers.push((lower, value.clone()));
        }
        Ok(headers)
    }

    fn authority(&self, p: &ProbeDoc) -> Result<Option<String>, ConfigError> {
        match &p.authority {
            Some(a)
                if a.is_empty()
                    || a.len() > l::MAX_PROBE_HEADER_BYTES
                    || !a.bytes().all(|b| (b'!'..=b'~').contains(&b)) =>
            {
                Err(self.bad(
                    "probe.authority",
                    format!(
                        "must be a host name (at most {} bytes, no spaces), but was {a:?}",
                        l::MAX_PROBE_HEADER_BYTES
                    ),
                ))
            }
            other => Ok(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::config::PluginConfig;
    use crate::core::duration::Millis;
    use crate::core::limits as l;
    use crate::core::probe_spec::ProbeMethod;

    fn parse(probe: &str) -> Result<PluginConfig, String> {
        let json =
            format!(r#"{{"clusters": {{"school": {{"open_duration": "5s", "probe": {probe}}}}}}}"#);
        PluginConfig::parse(json.as_bytes()).map_err(|e| e.to_string())
    }

    fn refusal(probe: &str) -> String {
        parse(probe).expect_err("refused")
    }

    #[test]
    fn the_example_block_compiles_and_defaults_fill_the_rest() {
        let c = parse(
            r#"{"path": "/health", "method": "GET", "headers": {"X-Probe": "1"},
                "authority": "school", "timeout": "1s", "expect_status": ["2xx"],
                "interval": "1s"}"#,
        )
        .unwrap();
        let p = c.settings_for("school").probe.clone().unwrap();
        assert_eq!(p.headers, [("x-probe".to_string(), "1".to_string())]);
        assert_eq!((p.timeout_ms, p.interval_ms), (1_000, 1_000));
        assert_eq!(p.authority.as_deref(), Some("school"));
        let p = parse(r#"{"path": "/healthz"}"#).unwrap().clusters["school"]
            .probe
            .clone()
            .unwrap();
        assert_eq!(p.method, ProbeMethod::Get);
        assert_eq!(p.timeout_ms, l::PROBE_TIMEOUT_MS.default);
        assert_eq!(p.interval_ms, l::PROBE_INTERVAL_MS.default);
        assert!(p.expect_status.contains(204) && !p.expect_status.contains(301));
        assert!(p.authority.is_none() && p.headers.is_empty());
        assert!(PluginConfig::parse(b"{}").unwrap().default.probe.is_none());
    }

    #[test]
    fn a_cluster_inherits_the_default_probe_whole() {
        let c = PluginConfig::parse(
            br#"{"default": {"probe": {"path": "/health"}}, "clusters": {"auth": {}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.settings_for("auth").probe.as_ref().unwrap().path,
            "/health"
        );
    }

    #[test]
    fn bad_probes_are_refused_naming_the_field() {
        let cases = [
            (r#"{"path": "health"}"#, "clusters.school.probe.path: must be a path starting with \"/\""),
            (r#"{"path": "/a b"}"#, "clusters.school.probe.path"),
            (r#"{"timeout": "1s"}"#, "clusters.school.probe: missing field `path`"),
            (r#"{"path": "/h", "method": "FETCH"}"#, "clusters.school.probe.method: unknown variant `FETCH`"),
            (r#"{"path": "/h", "headers": {"x y": "1"}}"#, "clusters.school.probe.headers: \"x y\" is not a header name a probe may set"),
            (r#"{"path": "/h", "headers": {":path": "/x"}}"#, "probe.headers: \":path\" is not"),
            (r#"{"path": "/h", "headers": {"Host": "x"}}"#, "probe.headers: \"Host\" is not"),
            (r#"{"path": "/h", "headers": {"x-a": "1\r\nx-b: 2"}}"#, "probe.headers: the value of \"x-a\" must be printable ASCII"),
            (r#"{"path": "/h", "authority": ""}"#, "clusters.school.probe.authority: must be a host name"),
            (r#"{"path": "/h", "timeout": "3s", "interval": "2s"}"#, "clusters.school.probe.timeout: must not be longer than interval (2s), but was 3s"),
            (r#"{"path": "/h", "timeout": "6s", "interval": "10s"}"#, "clusters.school.probe.timeout: must not be longer than open_duration (5s), but was 6s"),
            (r#"{"path": "/h", "expect_status": []}"#, "clusters.school.probe.expect_status: must name at least one status, but was []"),
            (r#"{"path": "/h", "expect_status": ["6xx"]}"#, "clusters.school.probe.expect_status: items must be status codes"),
            (r#"{"path": "/h", "interval": "50ms"}"#, "clusters.school.probe.interval: must be between 100ms and 1h, but was \"50ms\""),
            (r#"{"path": "/h", "extra": 1}"#, "clusters.school.probe.extra: unknown field `extra`"),
        ];
        for (probe, says) in cases {
            let refused = refusal(probe);
            assert!(refused.contains(says), "{probe}: {refused}");
        }
    }

    #[test]
    fn every_probe_bound_is_enforced_and_documented() {
        let schema = serde_json::to_value(schemars::schema_for!(super::ProbeDoc)).unwrap();
        let doc = |field: &str| {
            schema["properties"][field]["description"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        for (field, limit) in [
            ("timeout", l::PROBE_TIMEOUT_MS),
            ("interval", l::PROBE_INTERVAL_MS),
        ] {
            let with = |ms: u64| {
                let other = if field == "timeout" {
                    r#""interval": "1h""#
                } else {
                    r#""timeout": "1ms""#
                };
                PluginConfig::parse(format!(r#"{{"default": {{"open_duration": "24h", "probe": {{"path": "/h", "{field}": "{ms}ms", {other}}}}}}}"#).as_bytes())
            };
            assert!(
                with(limit.min).is_ok() && with(limit.max).is_ok(),
                "{field} inside"
            );
            assert!(
                with(limit.min - 1).is_err() && with(limit.max + 1).is_err(),
                "{field} outside"
            );
            let stated = format!(
                "\"{}\" to \"{}\", default \"{}\"",
                Millis(limit.min),
                Millis(limit.max),
                Millis(limit.default)
            );
            assert!(
                doc(field).contains(&stated),
                "{field}: {} does not say {stated}",
                doc(field)
            );
        }
        let headers = |n: usize| {
            let map: serde_json::Map<_, _> =
                (0..n).map(|i| (format!("x-{i}"), "v".into())).collect();
            parse(&serde_json::json!({"path": "/h", "headers": map}).to_string())
        };
        assert!(
            headers(l::MAX_PROBE_HEADERS).is_ok() && headers(l::MAX_PROBE_HEADERS + 1).is_err()
        );
        assert!(doc("headers").contains(&format!("At most {}", l::MAX_PROBE_HEADERS)));
        let value = |n: usize| {
            parse(&serde_json::json!({"path": "/h", "headers": {"x": "v".repeat(n)}}).to_string())
        };
        assert!(
            value(l::MAX_PROBE_HEADER_BYTES).is_ok()
                && value(l::MAX_PROBE_HEADER_BYTES + 1).is_err()
        );
        let path = |n: usize| {
            parse(&serde_json::json!({"path": format!("/{}", "p".repeat(n - 1))}).to_string())
        };
        assert!(path(l::MAX_PATH_BYTES).is_ok() && path(l::MAX_PATH_BYTES + 1).is_err());
    }
}
