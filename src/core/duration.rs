//! Durations as users write them in the plugin JSON ("250ms", "30s", "5m", "1h"), kept as
//! whole milliseconds because every clock the breaker reads is in milliseconds.

use std::fmt;

/// A parse failure, kept apart from the field name so the caller can say which field it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadDuration;

/// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h` into milliseconds.
pub fn parse_millis(text: &str) -> Result<u64, BadDuration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(BadDuration)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return Err(BadDuration);
    }
    let amount: u64 = digits.parse().map_err(|_| BadDuration)?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(BadDuration),
    };
    amount.checked_mul(scale).ok_or(BadDuration)
}

/// Milliseconds written back the way a user would type them: seconds up to ten minutes
/// ("60s" reads better than "1m" next to seed 004's "60 seconds"), larger units beyond.
pub struct Millis(pub u64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms != 0 && ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms >= 600_000 && ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms != 0 && ms % 1_000 == 0 {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_unit() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("5m"), Ok(300_000));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis(" 0s "), Ok(0));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "s",
            "10",
            "10 s",
            "-5s",
            "1.5s",
            "10sec",
            "10S",
            "5d",
            "ms10",
            "99999999999999s",
        ] {
            assert_eq!(parse_millis(bad), Err(BadDuration), "{bad:?}");
        }
    }

    #[test]
    fn the_longest_accepted_number_cannot_overflow() {
        assert_eq!(
            parse_millis("999999999999h"),
            Ok(999_999_999_999 * 3_600_000)
        );
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Millis(250).to_string(), "250ms");
        assert_eq!(Millis(30_000).to_string(), "30s");
        assert_eq!(Millis(90_000).to_string(), "90s");
        assert_eq!(Millis(60_000).to_string(), "60s");
        assert_eq!(Millis(300_000).to_string(), "300s");
        assert_eq!(Millis(900_000).to_string(), "15m");
        assert_eq!(Millis(3_600_000).to_string(), "1h");
        assert_eq!(Millis(0).to_string(), "0ms");
    }
}
