//! The checks of a settings block's composite fields (status lists, gRPC codes, excluded
//! paths, the fallback answer, the answer cache), each refusal naming the field, the rule
//! and the value.

use super::l;
use super::{CacheDoc, FallbackDoc, GrpcCodeDoc, StatusItemDoc};
use crate::core::cache::CacheSettings;
use crate::core::config_error::{Check, ConfigError};
use crate::core::fallback::{Fallback, Template};
use crate::core::outcome::{StatusSet, GRPC_CODES};

impl Check<'_> {
    pub(super) fn statuses(
        &self,
        field: &str,
        items: &[StatusItemDoc],
    ) -> Result<StatusSet, ConfigError> {
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

    pub(super) fn grpc_codes(&self, codes: &[GrpcCodeDoc]) -> Result<u32, ConfigError> {
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

    pub(super) fn paths(&self, paths: &[String]) -> Result<Vec<String>, ConfigError> {
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
            if !p.starts_with('/') || p.len() > l::MAX_PATH_BYTES || p.chars().any(char::is_control)
            {
                return Err(self.bad("exclude_paths", format!("items must be path prefixes starting with \"/\" (at most {} characters), but one was {p:?}", l::MAX_PATH_BYTES)));
            }
        }
        Ok(paths.to_vec())
    }

    pub(super) fn fallback(&self, f: &FallbackDoc) -> Result<Fallback, ConfigError> {
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

    pub(super) fn cache(&self, c: &CacheDoc) -> Result<CacheSettings, ConfigError> {
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
