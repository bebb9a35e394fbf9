//! COSEM date-time (12 bytes), date (5) and time (4). Fields set to "not specified" (`FF`, `FFFF`, deviation
//! `8000`) are `None`.
//!
//! Deviation follows the Blue Book: minutes such that UTC = local time + deviation (so UTC+01:00 is -60). The ISO
//! rendering with an offset uses the opposite sign, as ISO-8601 does.

use crate::calendar::{civil_from_days, days_from_civil};
use std::fmt;

/// A COSEM date-time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CosemDateTime {
    /// Year, `None` when `FFFF`.
    pub year: Option<u16>,
    /// Month 1..12 (or `FD`/`FE` DST markers), `None` when `FF`.
    pub month: Option<u8>,
    /// Day of month (or `FD`/`FE` last days), `None` when `FF`.
    pub day: Option<u8>,
    /// Day of week 1 = Monday .. 7 = Sunday, `None` when `FF`.
    pub day_of_week: Option<u8>,
    /// Hour, `None` when `FF`.
    pub hour: Option<u8>,
    /// Minute, `None` when `FF`.
    pub minute: Option<u8>,
    /// Second, `None` when `FF`.
    pub second: Option<u8>,
    /// Hundredths, `None` when `FF`.
    pub hundredths: Option<u8>,
    /// Minutes (UTC = local + deviation), `None` when `8000` (or `FFFF`).
    pub deviation: Option<i16>,
    /// Clock status bits (`FF` = not specified, kept as is).
    pub clock_status: u8,
}

fn opt(b: u8) -> Option<u8> {
    (b != 0xFF).then_some(b)
}

impl CosemDateTime {
    /// Parses 12 bytes.
    pub fn from_bytes(b: &[u8; 12]) -> Self {
        let [y0, y1, month, day, dow, hour, minute, second, hundredths, d0, d1, status] = *b;
        let year = u16::from_be_bytes([y0, y1]);
        let deviation = i16::from_be_bytes([d0, d1]);
        CosemDateTime {
            year: (year != 0xFFFF).then_some(year),
            month: opt(month),
            day: opt(day),
            day_of_week: opt(dow),
            hour: opt(hour),
            minute: opt(minute),
            second: opt(second),
            hundredths: opt(hundredths),
            // 0x8000 is "not specified"; 0xFFFF (-1 min, no real time zone) is how all-FF wildcards arrive.
            deviation: (deviation != i16::MIN && deviation != -1).then_some(deviation),
            clock_status: status,
        }
    }

    /// Parses a slice that must be exactly 12 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <&[u8; 12]>::try_from(b).ok().map(Self::from_bytes)
    }

    /// The 12 bytes.
    pub fn to_bytes(&self) -> [u8; 12] {
        let [y0, y1] = self.year.unwrap_or(0xFFFF).to_be_bytes();
        let [d0, d1] = self.deviation.unwrap_or(i16::MIN).to_be_bytes();
        let f = |v: Option<u8>| v.unwrap_or(0xFF);
        [
            y0,
            y1,
            f(self.month),
            f(self.day),
            f(self.day_of_week),
            f(self.hour),
            f(self.minute),
            f(self.second),
            f(self.hundredths),
            d0,
            d1,
            self.clock_status,
        ]
    }

    /// A fully specified UTC date-time (deviation 0) `seconds` after the Unix epoch.
    pub fn from_unix_utc(seconds: i64) -> Self {
        let days = seconds.div_euclid(86_400);
        let secs = seconds.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // 1970-01-01 was a Thursday (4 in 1 = Monday numbering).
        let dow = ((days.rem_euclid(7) + 3) % 7 + 1) as u8;
        CosemDateTime {
            year: u16::try_from(y).ok(),
            month: Some(m),
            day: Some(d),
            day_of_week: Some(dow),
            hour: Some((secs / 3600) as u8),
            minute: Some((secs % 3600 / 60) as u8),
            second: Some((secs % 60) as u8),
            hundredths: Some(0),
            deviation: Some(0),
            clock_status: 0,
        }
    }

    /// Whether date and time are fully specified calendar values (no wildcards or DST markers).
    pub fn is_concrete(&self) -> bool {
        matches!((self.month, self.day), (Some(1..=12), Some(1..=31)))
            && self.year.is_some()
            && self.hour.is_some_and(|h| h < 24)
            && self.minute.is_some_and(|m| m < 60)
            && self.second.is_some_and(|s| s < 60)
    }

    /// Local time as ISO-8601 without offset (`2025-03-20T10:00:00`), when concrete.
    pub fn iso_local(&self) -> Option<String> {
        if !self.is_concrete() {
            return None;
        }
        Some(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year?, self.month?, self.day?, self.hour?, self.minute?, self.second?
        ))
    }

    /// ISO-8601 with the UTC offset when the deviation is known (`2025-03-20T10:00:00-02:00`), else local.
    pub fn iso(&self) -> Option<String> {
        let local = self.iso_local()?;
        Some(match self.deviation {
            Some(dev) => {
                let offset = -i32::from(dev);
                let sign = if offset < 0 { '-' } else { '+' };
                format!("{local}{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
            }
            None => local,
        })
    }

    /// Seconds since the Unix epoch (UTC), when concrete and the deviation is known (else local time is taken as
    /// UTC).
    pub fn to_unix(&self) -> Option<i64> {
        if !self.is_concrete() {
            return None;
        }
        let days = days_from_civil(i64::from(self.year?), self.month?, self.day?);
        let local =
            days * 86_400 + i64::from(self.hour?) * 3600 + i64::from(self.minute?) * 60 + i64::from(self.second?);
        Some(local + i64::from(self.deviation.unwrap_or(0)) * 60)
    }
}

impl fmt::Display for CosemDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.iso() {
            Some(s) => f.write_str(&s),
            None => write!(f, "date-time {:02x?}", self.to_bytes()),
        }
    }
}

/// A COSEM date (5 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CosemDate {
    /// Year.
    pub year: Option<u16>,
    /// Month.
    pub month: Option<u8>,
    /// Day.
    pub day: Option<u8>,
    /// Day of week.
    pub day_of_week: Option<u8>,
}

impl CosemDate {
    /// Parses 5 bytes.
    pub fn from_bytes(b: &[u8; 5]) -> Self {
        let [y0, y1, month, day, dow] = *b;
        let year = u16::from_be_bytes([y0, y1]);
        CosemDate { year: (year != 0xFFFF).then_some(year), month: opt(month), day: opt(day), day_of_week: opt(dow) }
    }
}

/// A COSEM time (4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CosemTime {
    /// Hour.
    pub hour: Option<u8>,
    /// Minute.
    pub minute: Option<u8>,
    /// Second.
    pub second: Option<u8>,
    /// Hundredths.
    pub hundredths: Option<u8>,
}

impl CosemTime {
    /// Parses 4 bytes.
    pub fn from_bytes(b: &[u8; 4]) -> Self {
        let [hour, minute, second, hundredths] = *b;
        CosemTime { hour: opt(hour), minute: opt(minute), second: opt(second), hundredths: opt(hundredths) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_meter_clock() {
        let b: [u8; 12] = hex::decode("07ea011e05042213008000ff").unwrap().try_into().unwrap();
        let t = CosemDateTime::from_bytes(&b);
        assert_eq!(t.year, Some(2026));
        assert_eq!(t.day_of_week, Some(5));
        assert_eq!(t.deviation, None);
        assert_eq!(t.clock_status, 0xFF);
        assert_eq!(t.iso_local().as_deref(), Some("2026-01-30T04:34:19"));
        assert_eq!(t.to_bytes(), b);
    }

    #[test]
    fn unix_round_trip() {
        let t = CosemDateTime::from_unix_utc(1_769_747_659);
        assert_eq!(t.iso().as_deref(), Some("2026-01-30T04:34:19+00:00"));
        assert_eq!(t.day_of_week, Some(5));
        assert_eq!(t.to_unix(), Some(1_769_747_659));
        let unspecified = CosemDateTime::from_bytes(&[0xFF; 12]);
        assert_eq!(unspecified.iso(), None);
    }
}
