//! Reading an upstream's `Retry-After`: either delay-seconds or an HTTP-date (RFC 9110).
//! The value only ever becomes a number of milliseconds; nothing of its text is passed on.

/// The wait `value` asks for at `now_ms`, or `None` if it is not a valid `Retry-After`
/// or asks for no wait at all.
pub fn parse(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = value.parse().ok()?;
        return (secs > 0).then(|| secs.saturating_mul(1_000));
    }
    let at_ms = http_date_ms(value)?;
    (at_ms > now_ms).then(|| at_ms - now_ms)
}

/// An IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`, in milliseconds since the epoch.
fn http_date_ms(text: &str) -> Option<u64> {
    let rest = text.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':');
    let (h, m, s): (u64, u64, u64) = (
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || parts.next().is_some() || clock.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3_600 + m * 60 + s;
    secs.checked_mul(1_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delay_seconds() {
        assert_eq!(parse("120", 0), Some(120_000));
        assert_eq!(parse(" 3 ", 0), Some(3_000));
        assert_eq!(parse("0", 0), None, "no wait asked");
    }

    #[test]
    fn http_dates() {
        let at = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", at - 5_000),
            Some(5_000)
        );
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", at + 1),
            None,
            "in the past"
        );
        assert_eq!(http_date_ms("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date_ms("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400_000)
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "99999999999",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "3\r\nset-cookie: x",
        ] {
            assert_eq!(parse(bad, 0), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,64}", now: u64) {
            let _ = parse(&text, now);
        }
    }
}
