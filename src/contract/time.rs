//! Epoch-millisecond helpers shared by every layer: the contract's times are all UTC epoch ms.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Start of the interval of length `size` that holds `t` (also for times before 1970).
#[inline]
pub fn floor_to(t: i64, size: i64) -> i64 {
    t.div_euclid(size) * size
}

pub fn ceil_to(t: i64, size: i64) -> i64 {
    let f = floor_to(t, size);
    if f == t { t } else { f + size }
}

pub fn to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 with millisecond precision, e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// RFC 3339 for people: whole seconds without a fraction (`2026-01-01T00:00:00Z`), other times
/// with milliseconds. What replay fixtures write.
pub fn readable(ms: i64) -> String {
    if ms.rem_euclid(SECOND_MS) == 0 {
        to_datetime(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        rfc3339(ms)
    }
}

pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|e| format!("'{s}' is not an RFC 3339 time such as 2026-01-01T00:00:00Z ({e})"))
}

/// The Hive partition directory of an hour: `dt=YYYY-MM-DD/hr=HH`.
pub fn hive_hour_dir(ms: i64) -> String {
    to_datetime(floor_to(ms, HOUR_MS)).format("dt=%Y-%m-%d/hr=%H").to_string()
}

/// Parses `dt=YYYY-MM-DD` and `hr=HH` back into the hour's start.
pub fn parse_hive_hour(dt: &str, hr: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(dt.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
    let hour: u32 = hr.strip_prefix("hr=")?.parse().ok()?;
    let t = date.and_hms_opt(hour, 0, 0)?;
    Some(Utc.from_utc_datetime(&t).timestamp_millis())
}

pub fn parse_hive_date(dt: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(dt.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?).timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_dirs_round_trip() {
        let t = parse_rfc3339("2026-03-04T05:59:59.999Z").unwrap();
        assert_eq!(hive_hour_dir(t), "dt=2026-03-04/hr=05");
        assert_eq!(parse_hive_hour("dt=2026-03-04", "hr=05"), Some(floor_to(t, HOUR_MS)));
        assert_eq!(parse_hive_hour("dt=2026-13-04", "hr=05"), None);
        assert_eq!(parse_hive_hour("dt=2026-03-04", "hr=x"), None);
    }

    #[test]
    fn floor_handles_negative_times() {
        assert_eq!(floor_to(-1, MINUTE_MS), -MINUTE_MS);
        assert_eq!(ceil_to(1, MINUTE_MS), MINUTE_MS);
        assert_eq!(ceil_to(MINUTE_MS, MINUTE_MS), MINUTE_MS);
    }
}
