//! Strict RFC 3339 timestamps (SPEC 2, `BAD_TIMESTAMP`) and the civil-calendar
//! arithmetic behind event-time partitioning (SPEC 5).
//!
//! Accepted form, and nothing else:
//!
//! ```text
//! YYYY-MM-DD ( T | t ) hh:mm:ss [ . 1*DIGIT ] ( Z | z | ( + | - ) hh:mm )
//! ```
//!
//! The date and time must name a real instant of the proleptic Gregorian
//! calendar: month 01–12, a day that exists in that month (February 29 only
//! in leap years), hour 00–23, minute 00–59, second 00–59 (no leap second 60),
//! offset hours 00–23 and offset minutes 00–59. Years 0000–9999 are accepted
//! (RFC 3339's `4DIGIT`), and `-00:00` means UTC like `Z`.
//!
//! Fractional seconds beyond the millisecond are truncated. The fractional
//! part is never negative, so truncating it floors the instant toward the
//! earlier millisecond, also before 1970:
//! `1969-12-31T23:59:59.9999Z` is `-1`, not `0`.
//!
//! Day arithmetic uses Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (<https://howardhinnant.github.io/date_algorithms.html>).

use crate::event::Millis;

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_HOUR: i64 = 3_600_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1–12,
/// `day` 1–31; the caller checks the day exists).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (i64::from(month) + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month 1–12, day 1–31)` of a day
/// number counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Gregorian leap year rule.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Number of days in `month` (1–12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// UTC calendar fields of an instant: `(year, month 1–12, day 1–31,
/// hour 0–23, ISO weekday: Monday = 1 … Sunday = 7)`.
pub fn civil_from_ms(ms: Millis) -> (i32, u32, u32, u32, u32) {
    let days = ms.div_euclid(MS_PER_DAY);
    let ms_of_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let hour = (ms_of_day / MS_PER_HOUR) as u32;
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = ((days + 3).rem_euclid(7) + 1) as u32;
    (year as i32, month, day, hour, weekday)
}

/// Formats an instant as `YYYY-MM-DDThh:mm:ss.sssZ` in UTC.
///
/// Years outside 0000–9999 (not representable in RFC 3339) are written with
/// as many digits as they need, and a leading `-` when negative.
pub fn format_rfc3339_ms(ms: Millis) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let ms_of_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let hour = ms_of_day / MS_PER_HOUR;
    let minute = ms_of_day / 60_000 % 60;
    let second = ms_of_day / 1000 % 60;
    let milli = ms_of_day % 1000;
    let year = if year < 0 {
        format!("-{:04}", -year)
    } else {
        format!("{year:04}")
    };
    format!("{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Parses `N` ASCII digits at `b[at..at + N]`.
#[inline]
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

#[inline]
fn byte_is(b: &[u8], at: usize, c: u8) -> bool {
    b.get(at) == Some(&c)
}

/// Parses a strict RFC 3339 timestamp (see the module docs) into UTC Unix
/// milliseconds, truncating (flooring) digits finer than a millisecond.
/// `None` when the text is not exactly that form or names no real instant.
pub fn parse_rfc3339_ms(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    // YYYY-MM-DDThh:mm:ss is 19 bytes; the shortest valid string adds "Z".
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if !(byte_is(b, 4, b'-')
        && byte_is(b, 7, b'-')
        && (byte_is(b, 10, b'T') || byte_is(b, 10, b't'))
        && byte_is(b, 13, b':')
        && byte_is(b, 16, b':'))
    {
        return None;
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }

    let mut i = 19;
    let mut milli = 0i64;
    if byte_is(b, i, b'.') {
        i += 1;
        let start = i;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            if i - start < 3 {
                milli = milli * 10 + i64::from(c - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            milli *= 10;
        }
    }

    let offset_min: i64 = match b.get(i)? {
        b'Z' | b'z' => {
            i += 1;
            0
        }
        &sign @ (b'+' | b'-') => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if !byte_is(b, i + 3, b':') || oh > 23 || om > 59 {
                return None;
            }
            i += 6;
            let off = i64::from(oh * 60 + om);
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    if i != b.len() {
        return None;
    }

    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_min * 60;
    Some(secs * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<i64> {
        parse_rfc3339_ms(s)
    }

    #[test]
    fn epoch_and_known_instants() {
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("1970-01-01T00:00:00.001Z"), Some(1));
        assert_eq!(p("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(p("2024-01-01T00:00:00Z"), Some(1_704_067_200_000));
        assert_eq!(p("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(p("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(p("1900-01-01T00:00:00Z"), Some(-2_208_988_800_000));
        assert_eq!(p("0000-01-01T00:00:00Z"), Some(-62_167_219_200_000));
        assert_eq!(p("9999-12-31T23:59:59.999Z"), Some(253_402_300_799_999));
    }

    #[test]
    fn lowercase_t_and_z() {
        assert_eq!(p("2024-01-01t00:00:00z"), Some(1_704_067_200_000));
        assert_eq!(p("2024-01-01T00:00:00z"), Some(1_704_067_200_000));
        assert_eq!(p("2024-01-01t00:00:00Z"), Some(1_704_067_200_000));
    }

    #[test]
    fn fractional_digits_truncate() {
        let base = 1_704_067_200_000;
        assert_eq!(p("2024-01-01T00:00:00.1Z"), Some(base + 100));
        assert_eq!(p("2024-01-01T00:00:00.12Z"), Some(base + 120));
        assert_eq!(p("2024-01-01T00:00:00.123Z"), Some(base + 123));
        assert_eq!(p("2024-01-01T00:00:00.1239Z"), Some(base + 123));
        assert_eq!(p("2024-01-01T00:00:00.12399Z"), Some(base + 123));
        assert_eq!(p("2024-01-01T00:00:00.999999Z"), Some(base + 999));
        assert_eq!(p("2024-01-01T00:00:00.999999999Z"), Some(base + 999));
        assert_eq!(
            p("2024-01-01T00:00:00.0009999999999999999999999999Z"),
            Some(base)
        );
        assert_eq!(p("2024-01-01T00:00:00.000Z"), Some(base));
        assert_eq!(p("2024-01-01T00:00:00.0Z"), Some(base));
    }

    #[test]
    fn negative_epoch_floors() {
        assert_eq!(p("1969-12-31T23:59:59.9999Z"), Some(-1));
        assert_eq!(p("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(p("1969-12-31T23:59:59.9991Z"), Some(-1));
        assert_eq!(p("1969-12-31T23:59:59.0001Z"), Some(-1000));
        assert_eq!(p("1969-12-31T23:59:59.5Z"), Some(-500));
        // Offsets shift the instant; the sub-millisecond part still floors.
        assert_eq!(p("1970-01-01T00:59:59.9999+01:00"), Some(-1));
    }

    #[test]
    fn offsets() {
        let base = 1_704_067_200_000; // 2024-01-01T00:00:00Z
        assert_eq!(p("2024-01-01T01:00:00+01:00"), Some(base));
        assert_eq!(p("2023-12-31T23:00:00-01:00"), Some(base));
        assert_eq!(p("2024-01-01T05:30:00+05:30"), Some(base));
        assert_eq!(p("2024-01-01T00:00:00+00:00"), Some(base));
        assert_eq!(p("2024-01-01T00:00:00-00:00"), Some(base));
        assert_eq!(
            p("2024-01-01T23:59:00+23:59"),
            Some(base + 23 * 3_600_000 + 59 * 60_000 - (23 * 60 + 59) * 60_000)
        );
        assert_eq!(
            p("2024-01-01T00:00:00-23:59"),
            Some(base + (23 * 60 + 59) * 60_000)
        );
        assert_eq!(
            p("2024-01-01T00:00:00+23:59"),
            Some(base - (23 * 60 + 59) * 60_000)
        );
        assert_eq!(
            p("2024-01-01T00:00:00.5+01:00"),
            Some(base - 3_600_000 + 500)
        );
    }

    #[test]
    fn leap_years() {
        assert!(p("2000-02-29T00:00:00Z").is_some());
        assert!(p("2024-02-29T00:00:00Z").is_some());
        assert!(p("1600-02-29T00:00:00Z").is_some());
        assert!(p("0000-02-29T00:00:00Z").is_some());
        assert_eq!(p("1900-02-29T00:00:00Z"), None);
        assert_eq!(p("2023-02-29T00:00:00Z"), None);
        assert_eq!(p("2100-02-29T00:00:00Z"), None);
        assert_eq!(p("2024-02-30T00:00:00Z"), None);
        assert_eq!(
            p("2024-03-01T00:00:00Z").unwrap() - p("2024-02-28T00:00:00Z").unwrap(),
            2 * 86_400_000
        );
        assert_eq!(
            p("1900-03-01T00:00:00Z").unwrap() - p("1900-02-28T00:00:00Z").unwrap(),
            86_400_000
        );
    }

    #[test]
    fn day_bounds_per_month() {
        for (m, last) in [
            (1, 31),
            (2, 28),
            (3, 31),
            (4, 30),
            (5, 31),
            (6, 30),
            (7, 31),
            (8, 31),
            (9, 30),
            (10, 31),
            (11, 30),
            (12, 31),
        ] {
            let ok = format!("2023-{m:02}-{last:02}T12:00:00Z");
            let bad = format!("2023-{m:02}-{:02}T12:00:00Z", last + 1);
            let zero = format!("2023-{m:02}-00T12:00:00Z");
            assert!(p(&ok).is_some(), "{ok}");
            assert_eq!(p(&bad), None, "{bad}");
            assert_eq!(p(&zero), None, "{zero}");
        }
    }

    #[test]
    fn time_bounds() {
        assert_eq!(
            p("2024-01-01T23:59:59Z"),
            Some(1_704_067_200_000 + 86_399_000)
        );
        assert_eq!(p("2024-12-31T23:59:59.999Z"), Some(1_735_689_599_999));
        assert_eq!(p("2024-01-01T24:00:00Z"), None);
        assert_eq!(p("2024-01-01T00:60:00Z"), None);
        assert_eq!(p("2024-01-01T00:00:60Z"), None);
        assert_eq!(p("2016-12-31T23:59:60Z"), None);
        assert_eq!(p("2024-13-01T00:00:00Z"), None);
        assert_eq!(p("2024-00-01T00:00:00Z"), None);
    }

    #[test]
    fn bad_offsets() {
        assert_eq!(p("2024-01-01T00:00:00+24:00"), None);
        assert_eq!(p("2024-01-01T00:00:00-24:00"), None);
        assert_eq!(p("2024-01-01T00:00:00+01:60"), None);
        assert_eq!(p("2024-01-01T00:00:00+0100"), None);
        assert_eq!(p("2024-01-01T00:00:00+01"), None);
        assert_eq!(p("2024-01-01T00:00:00+1:00"), None);
        assert_eq!(p("2024-01-01T00:00:00+01:0"), None);
        assert_eq!(p("2024-01-01T00:00:00+01:000"), None);
        assert_eq!(p("2024-01-01T00:00:00 +01:00"), None);
        assert_eq!(p("2024-01-01T00:00:00"), None);
        assert_eq!(p("2024-01-01T00:00:00UTC"), None);
        assert_eq!(p("2024-01-01T00:00:00GMT"), None);
    }

    #[test]
    fn bad_shapes() {
        for s in [
            "",
            "Z",
            "2024-01-01",
            "2024-01-01T",
            "2024-01-01 00:00:00Z",
            "2024-01-01_00:00:00Z",
            "2024-01-01T00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.",
            "2024-01-01T00:00:00,5Z",
            "2024-01-01T00:00:00.5.5Z",
            " 2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z ",
            "2024-01-01T00:00:00ZZ",
            "2024-01-01T00:00:00Z\n",
            "x2024-01-01T00:00:00Z",
            "24-01-01T00:00:00Z",
            "02024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z",
            "2024-01-1T00:00:00Z",
            "2024-01-01T0:00:00Z",
            "2024/01/01T00:00:00Z",
            "2024-01-01T00.00.00Z",
            "+2024-01-01T00:00:00Z",
            "-2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00.1a3Z",
            "2024-0a-01T00:00:00Z",
            "2024-01-01T00:00:0 Z",
            // Non-ASCII digits (fullwidth, Arabic-Indic).
            "２０２４-01-01T00:00:00Z",
            "2024-01-01T00:00:00.١Z",
            "2024-01-01T00:00:00+٠١:00",
        ] {
            assert_eq!(p(s), None, "{s:?} must be rejected");
        }
    }

    #[test]
    fn civil_roundtrip_every_day_across_eras() {
        // Every day from 1600-01-01 to 2400-12-31 round-trips, and the day
        // count advances by exactly one per calendar day.
        let mut expect = days_from_civil(1600, 1, 1);
        for y in 1600..=2400i64 {
            for m in 1..=12u32 {
                for d in 1..=days_in_month(y, m) {
                    let n = days_from_civil(y, m, d);
                    assert_eq!(n, expect);
                    assert_eq!(civil_from_days(n), (y, m, d));
                    expect += 1;
                }
            }
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    #[test]
    fn civil_from_ms_fields() {
        // 2024-01-01 was a Monday.
        assert_eq!(civil_from_ms(1_704_067_200_000), (2024, 1, 1, 0, 1));
        // 2023-11-14T22:13:20Z, a Tuesday.
        assert_eq!(civil_from_ms(1_700_000_000_000), (2023, 11, 14, 22, 2));
        // 1970-01-01 was a Thursday.
        assert_eq!(civil_from_ms(0), (1970, 1, 1, 0, 4));
        // One millisecond before the epoch: Wednesday 1969-12-31, 23h.
        assert_eq!(civil_from_ms(-1), (1969, 12, 31, 23, 3));
        // 2024-01-07 was a Sunday.
        assert_eq!(
            civil_from_ms(p("2024-01-07T13:45:00Z").unwrap()),
            (2024, 1, 7, 13, 7)
        );
        assert_eq!(
            civil_from_ms(p("2024-02-29T23:59:59.999Z").unwrap()),
            (2024, 2, 29, 23, 4)
        );
        // Offsets convert to UTC.
        assert_eq!(
            civil_from_ms(p("2024-01-01T01:30:00+02:00").unwrap()),
            (2023, 12, 31, 23, 7)
        );
        // Every weekday of one week, in order.
        let monday = p("2024-06-03T00:00:00Z").unwrap();
        for i in 0..7 {
            assert_eq!(civil_from_ms(monday + i * 86_400_000).4, (i + 1) as u32);
        }
        // Extremes do not overflow.
        let _ = civil_from_ms(i64::MIN);
        let _ = civil_from_ms(i64::MAX);
    }

    #[test]
    fn format_and_roundtrip() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(-62_167_219_200_000),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_ms(-62_167_219_200_001),
            "-0001-12-31T23:59:59.999Z"
        );
        for ms in [
            0i64,
            -1,
            1,
            999,
            -999,
            -1000,
            -1001,
            951_782_400_000,
            1_709_251_199_999,
            -2_208_988_800_000,
            -62_167_219_200_000,
            253_402_300_799_999,
        ] {
            let s = format_rfc3339_ms(ms);
            assert_eq!(p(&s), Some(ms), "{s}");
        }
        let mut ms = -62_167_219_200_000i64;
        while ms < 253_402_300_799_999 {
            assert_eq!(p(&format_rfc3339_ms(ms)), Some(ms));
            ms += 7_777_777_777_777 / 1000 + 1;
        }
    }
}
