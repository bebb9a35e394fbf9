//! Calendar date-times as DL/T 645 sends them (BCD, two-digit year 2000..=2099).

use super::bcd::{from_bcd_byte, to_bcd_byte};
use crate::calendar::civil_from_days;

/// A local date-time with second resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterDateTime {
    /// 2000..=2099.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
}

/// Why a date-time cannot be sent or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("date-time out of range for DL/T 645 (years 2000..=2099, valid calendar fields)")]
pub struct DateTimeError;

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

impl MeterDateTime {
    /// Checks the fields.
    pub fn new(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Result<Self, DateTimeError> {
        let ok = (2000..=2099).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second < 60;
        if ok { Ok(MeterDateTime { year, month, day, hour, minute, second }) } else { Err(DateTimeError) }
    }

    /// `ss mm hh DD MM YY` as BCD (broadcast time and relay deadlines).
    pub fn to_bcd_ssmmhhddmmyy(&self) -> [u8; 6] {
        let yy = (self.year % 100) as u8;
        [self.second, self.minute, self.hour, self.day, self.month, yy].map(|v| to_bcd_byte(v).unwrap_or(0))
    }

    /// Parses `ss mm hh DD MM YY` BCD bytes.
    pub fn from_bcd_ssmmhhddmmyy(bytes: &[u8]) -> Result<Self, DateTimeError> {
        let [ss, mm, hh, dd, mo, yy] = bytes else { return Err(DateTimeError) };
        let f = |b: &u8| from_bcd_byte(*b).map_err(|_| DateTimeError);
        Self::new(2000 + u16::from(f(yy)?), f(mo)?, f(dd)?, f(hh)?, f(mm)?, f(ss)?)
    }

    /// ISO-8601 local date-time `YYYY-MM-DDThh:mm:ss`.
    pub fn to_iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// The date-time `seconds` after the Unix epoch (UTC), when it falls in 2000..=2099.
    pub fn from_unix(seconds: i64) -> Result<Self, DateTimeError> {
        let days = seconds.div_euclid(86_400);
        let secs = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let year = u16::try_from(year).map_err(|_| DateTimeError)?;
        Self::new(year, month, day, (secs / 3600) as u8, (secs % 3600 / 60) as u8, (secs % 60) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let t = MeterDateTime::new(2026, 1, 30, 4, 34, 19).unwrap();
        assert_eq!(t.to_bcd_ssmmhhddmmyy(), [0x19, 0x34, 0x04, 0x30, 0x01, 0x26]);
        assert_eq!(MeterDateTime::from_bcd_ssmmhhddmmyy(&t.to_bcd_ssmmhhddmmyy()).unwrap(), t);
        assert_eq!(t.to_iso(), "2026-01-30T04:34:19");
        assert_eq!(MeterDateTime::from_unix(1_769_747_659).unwrap(), t);
        assert!(MeterDateTime::new(2026, 2, 29, 0, 0, 0).is_err());
        assert!(MeterDateTime::new(2024, 2, 29, 0, 0, 0).is_ok());
        assert!(MeterDateTime::from_unix(0).is_err());
    }
}
