//! Durations as users write them in the plugin JSON ("250ms", "30s", "5m", "1h"), kept as
//! whole milliseconds because every clock the breaker reads is in milliseconds.

use std::fmt;

use super::limits::DURATION_DIGITS;

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
    if digits.is_empty() || digits.len() > DURATION_DIGITS {
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

/// `ms` since the Unix epoch as RFC 3339 UTC (`2026-11-23T14:20:12.414Z`), for views,
/// events and logs meant for people and other programs.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1_000
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(784_111_777_123), "1994-11-06T08:49:37.123Z");
        assert_eq!(rfc3339(1_835_438_400_000), "2028-02-29T12:00:00.000Z");
    }
}
