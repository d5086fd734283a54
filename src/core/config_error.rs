//! A refused configuration: which field, and what is wrong with its value. Its own module
//! so that every part of the configuration (the fleet block too) can name a refusal without
//! depending on the whole parser.

use std::fmt;

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
