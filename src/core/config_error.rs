//! A refused configuration: which field, and what is wrong with its value, and the checks
//! every part of the configuration shares (a number within its limit, a duration within
//! its limit), which name the field they refuse. Its own module so that every part of the
//! configuration (the fleet block too) can refuse a value without depending on the whole
//! parser.

use std::fmt;

use super::duration::{parse_millis, Millis};
use super::limits::Limit;

/// Why a configuration was refused: which field, and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, such as `clusters.auth.open_duration`.
    pub field: String,
    /// The rule that was broken, with the bad value.
    pub problem: String,
}

impl ConfigError {
    /// The same refusal about one part of the field (`max_bytes must be ...`).
    pub(crate) fn prefixed(self, part: &str) -> ConfigError {
        ConfigError {
            problem: format!("{part} {}", self.problem),
            ..self
        }
    }
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

/// Field checks that know how to name the field they check.
pub(crate) struct Check<'a> {
    /// The full path of a field of the block being checked.
    pub at: &'a dyn Fn(&str) -> String,
}

impl Check<'_> {
    pub(crate) fn bad(&self, field: &str, problem: String) -> ConfigError {
        ConfigError {
            field: (self.at)(field),
            problem,
        }
    }

    /// `v` (or the default when unset), refused unless it lies within the limit.
    pub(crate) fn within<T: PartialOrd + Copy + std::fmt::Display>(
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

    pub(crate) fn duration(
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
}
