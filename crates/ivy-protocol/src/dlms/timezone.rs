//! The meter's time zone: turns a COSEM date-time into an instant. A date-time that carries its deviation is
//! exact; one without (`0x8000`, how the EM114070 and many others send their clock) is meter-local time, resolved
//! in the zone the operator configured: an IANA zone (DST included) or a fixed UTC offset.
//!
//! The IANA database is compiled in (jiff's bundled tzdb): nothing reads the system's zone files or clock, so the
//! answer is the same on every host and in tests.
//!
//! Ambiguous local times: in a fold (the hour repeated when DST ends) the clock status bit "daylight saving active"
//! (IEC 62056-6-2, bit 7) picks the occurrence when the meter sets it (`0x80` → the DST one, clear → the standard
//! one); with the status unspecified (`0xFF`) the earlier occurrence is taken. A time in a gap (skipped when DST
//! starts) is shifted forward by the gap's length (RFC 5545 / Temporal "compatible").

use super::datetime::CosemDateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// Clock status bit: daylight saving active.
pub const CLOCK_STATUS_DST: u8 = 0x80;

/// Why a zone name is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a time zone of the IANA database (e.g. Europe/Berlin, Asia/Shanghai, UTC)")]
pub struct ZoneError(pub String);

/// The zone meters keep their clocks in.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterZone {
    /// A fixed offset, minutes east of UTC (local = UTC + offset).
    Fixed(i32),
    /// An IANA zone.
    Iana(IanaZone),
}

/// An IANA zone with its name.
#[derive(Debug, Clone)]
pub struct IanaZone {
    name: String,
    tz: TimeZone,
}

impl PartialEq for IanaZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// How the offset of a resolved time was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffsetBasis {
    /// The date-time's own deviation.
    Deviation,
    /// The configured IANA zone.
    Zone,
    /// The configured fixed offset.
    FixedOffset,
}

impl OffsetBasis {
    /// Snake-case name.
    pub fn name(&self) -> &'static str {
        match self {
            OffsetBasis::Deviation => "deviation",
            OffsetBasis::Zone => "zone",
            OffsetBasis::FixedOffset => "fixed_offset",
        }
    }
}

/// A date-time resolved to an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ZonedTime {
    /// Milliseconds since the Unix epoch (UTC).
    pub unix_ms: i64,
    /// The local offset, minutes east of UTC (ISO sign).
    pub offset_minutes: i32,
    /// Where the offset came from.
    pub basis: OffsetBasis,
}

impl ZonedTime {
    /// ISO-8601 local time with its explicit offset (`2025-05-16T23:45:00+02:00`; milliseconds when not zero).
    pub fn iso(&self) -> String {
        let local_ms = self.unix_ms + i64::from(self.offset_minutes) * 60_000;
        let local = CosemDateTime::from_unix_utc(local_ms.div_euclid(1000));
        let base = local.iso_local().unwrap_or_default();
        let ms = local_ms.rem_euclid(1000);
        let frac = if ms == 0 { String::new() } else { format!(".{ms:03}") };
        let off = self.offset_minutes;
        if off == 0 {
            return format!("{base}{frac}Z");
        }
        let sign = if off < 0 { '-' } else { '+' };
        format!("{base}{frac}{sign}{:02}:{:02}", off.abs() / 60, off.abs() % 60)
    }
}

impl MeterZone {
    /// An IANA zone by name (`Europe/Berlin`), from the compiled-in database.
    pub fn iana(name: &str) -> Result<Self, ZoneError> {
        let tz = jiff::tz::db().get(name.trim()).map_err(|_| ZoneError(name.to_owned()))?;
        Ok(MeterZone::Iana(IanaZone { name: name.trim().to_owned(), tz }))
    }

    /// The zone's name (`Europe/Berlin`, or `UTC+08:00` for a fixed offset).
    pub fn name(&self) -> String {
        match self {
            MeterZone::Iana(z) => z.name.clone(),
            MeterZone::Fixed(off) => {
                let sign = if *off < 0 { '-' } else { '+' };
                format!("UTC{sign}{:02}:{:02}", off.abs() / 60, off.abs() % 60)
            }
        }
    }

    /// The offset (minutes east of UTC) in force at `unix_ms`.
    pub fn offset_at(&self, unix_ms: i64) -> i32 {
        match self {
            MeterZone::Fixed(off) => *off,
            MeterZone::Iana(z) => {
                jiff::Timestamp::from_millisecond(unix_ms).map(|ts| z.tz.to_offset(ts).seconds() / 60).unwrap_or(0)
            }
        }
    }

    /// The instant of `t`: by its deviation when it has one, else as local time in this zone. `None` when `t` is
    /// not a concrete calendar date-time (wildcards, DST markers, 30 February).
    pub fn resolve(&self, t: &CosemDateTime) -> Option<ZonedTime> {
        if !t.is_concrete() {
            return None;
        }
        let hundredths = t.hundredths.filter(|h| *h < 100).map_or(0, i64::from);
        if let Some(dev) = t.deviation {
            let unix = t.to_unix()?;
            // A concrete date that does not exist (31 April) has no instant.
            civil(t)?;
            return Some(ZonedTime {
                unix_ms: unix * 1000 + hundredths * 10,
                offset_minutes: -i32::from(dev),
                basis: OffsetBasis::Deviation,
            });
        }
        match self {
            MeterZone::Fixed(off) => {
                civil(t)?;
                let local = t.to_unix()?;
                Some(ZonedTime {
                    unix_ms: (local - i64::from(*off) * 60) * 1000 + hundredths * 10,
                    offset_minutes: *off,
                    basis: OffsetBasis::FixedOffset,
                })
            }
            MeterZone::Iana(z) => {
                let dt = civil(t)?;
                let ambiguous = z.tz.to_ambiguous_timestamp(dt);
                let ts = match ambiguous.offset() {
                    AmbiguousOffset::Fold { .. } => {
                        let earlier = ambiguous.earlier().ok()?;
                        let later = ambiguous.later().ok()?;
                        match t.clock_status {
                            0xFF => earlier,
                            status => {
                                let want_dst = status & CLOCK_STATUS_DST != 0;
                                if z.tz.to_offset_info(later).dst().is_dst() == want_dst
                                    && z.tz.to_offset_info(earlier).dst().is_dst() != want_dst
                                {
                                    later
                                } else {
                                    earlier
                                }
                            }
                        }
                    }
                    AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Gap { .. } => ambiguous.compatible().ok()?,
                };
                let offset_minutes = z.tz.to_offset(ts).seconds() / 60;
                Some(ZonedTime {
                    unix_ms: ts.as_millisecond() + hundredths * 10,
                    offset_minutes,
                    basis: OffsetBasis::Zone,
                })
            }
        }
    }
}

/// The civil date-time of a concrete COSEM date-time (seconds precision), `None` when the date does not exist.
fn civil(t: &CosemDateTime) -> Option<jiff::civil::DateTime> {
    let year = i16::try_from(t.year?).ok()?;
    let small = |v: Option<u8>| v.and_then(|v| i8::try_from(v).ok());
    jiff::civil::DateTime::new(
        year,
        small(t.month)?,
        small(t.day)?,
        small(t.hour)?,
        small(t.minute)?,
        small(t.second)?,
        0,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(y: u16, mo: u8, d: u8, h: u8, mi: u8, status: u8) -> CosemDateTime {
        CosemDateTime {
            year: Some(y),
            month: Some(mo),
            day: Some(d),
            day_of_week: None,
            hour: Some(h),
            minute: Some(mi),
            second: Some(0),
            hundredths: None,
            deviation: None,
            clock_status: status,
        }
    }

    fn utc(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn deviation_wins_over_the_zone() {
        let b: [u8; 12] = hex::decode("07e9051005172d0000ff8880").unwrap().try_into().unwrap();
        let t = CosemDateTime::from_bytes(&b);
        let z = MeterZone::iana("America/New_York").unwrap();
        let r = z.resolve(&t).unwrap();
        assert_eq!(r.unix_ms, utc("2025-05-16T21:45:00Z"));
        assert_eq!(r.basis, OffsetBasis::Deviation);
        assert_eq!(r.iso(), "2025-05-16T23:45:00+02:00");
    }

    #[test]
    fn em114070_clock_in_a_zone_and_a_fixed_offset() {
        // 07 EA 01 1E 05 04 22 13 00 80 00 FF: 2026-01-30 04:34:19, deviation not specified.
        let b: [u8; 12] = hex::decode("07ea011e05042213008000ff").unwrap().try_into().unwrap();
        let t = CosemDateTime::from_bytes(&b);
        let r = MeterZone::iana("Asia/Shanghai").unwrap().resolve(&t).unwrap();
        assert_eq!(r.iso(), "2026-01-30T04:34:19+08:00");
        assert_eq!(r.unix_ms, utc("2026-01-29T20:34:19Z"));
        let r = MeterZone::Fixed(-150).resolve(&t).unwrap();
        assert_eq!(r.iso(), "2026-01-30T04:34:19-02:30");
        assert_eq!(r.unix_ms, utc("2026-01-30T07:04:19Z"));
        let r = MeterZone::Fixed(0).resolve(&t).unwrap();
        assert_eq!(r.iso(), "2026-01-30T04:34:19Z");
        assert_eq!(r.basis, OffsetBasis::FixedOffset);
    }

    #[test]
    fn summer_and_winter_offsets() {
        let z = MeterZone::iana("Europe/Berlin").unwrap();
        assert_eq!(z.resolve(&local(2025, 1, 15, 12, 0, 0xFF)).unwrap().iso(), "2025-01-15T12:00:00+01:00");
        assert_eq!(z.resolve(&local(2025, 7, 15, 12, 0, 0xFF)).unwrap().iso(), "2025-07-15T12:00:00+02:00");
        assert_eq!(z.offset_at(utc("2025-07-15T10:00:00Z")), 120);
    }

    #[test]
    fn dst_gap_moves_forward() {
        // Europe/Berlin 2025-03-30: 02:00 → 03:00. 02:30 does not exist; it is 03:30 CEST = 01:30Z.
        let z = MeterZone::iana("Europe/Berlin").unwrap();
        let r = z.resolve(&local(2025, 3, 30, 2, 30, 0xFF)).unwrap();
        assert_eq!(r.unix_ms, utc("2025-03-30T01:30:00Z"));
        assert_eq!(r.iso(), "2025-03-30T03:30:00+02:00");
        // Either side of the gap.
        assert_eq!(z.resolve(&local(2025, 3, 30, 1, 59, 0)).unwrap().unix_ms, utc("2025-03-30T00:59:00Z"));
        assert_eq!(z.resolve(&local(2025, 3, 30, 3, 0, 0x80)).unwrap().unix_ms, utc("2025-03-30T01:00:00Z"));
    }

    #[test]
    fn dst_fold_uses_the_clock_status() {
        // Europe/Berlin 2025-10-26: 03:00 CEST → 02:00 CET; 02:30 happens twice.
        let z = MeterZone::iana("Europe/Berlin").unwrap();
        let summer = z.resolve(&local(2025, 10, 26, 2, 30, CLOCK_STATUS_DST)).unwrap();
        assert_eq!(summer.unix_ms, utc("2025-10-26T00:30:00Z"));
        assert_eq!(summer.iso(), "2025-10-26T02:30:00+02:00");
        let winter = z.resolve(&local(2025, 10, 26, 2, 30, 0x00)).unwrap();
        assert_eq!(winter.unix_ms, utc("2025-10-26T01:30:00Z"));
        assert_eq!(winter.iso(), "2025-10-26T02:30:00+01:00");
        // Status not specified: the earlier occurrence.
        assert_eq!(z.resolve(&local(2025, 10, 26, 2, 30, 0xFF)).unwrap().unix_ms, summer.unix_ms);
        // Southern hemisphere: Australia/Sydney 2025-04-06 03:00 AEDT → 02:00 AEST.
        let syd = MeterZone::iana("Australia/Sydney").unwrap();
        assert_eq!(syd.resolve(&local(2025, 4, 6, 2, 30, 0x80)).unwrap().unix_ms, utc("2025-04-05T15:30:00Z"));
        assert_eq!(syd.resolve(&local(2025, 4, 6, 2, 30, 0x00)).unwrap().unix_ms, utc("2025-04-05T16:30:00Z"));
    }

    #[test]
    fn bad_names_and_dates() {
        assert!(MeterZone::iana("Mars/Olympus").is_err());
        assert_eq!(MeterZone::iana("UTC").unwrap().name(), "UTC");
        assert_eq!(MeterZone::Fixed(480).name(), "UTC+08:00");
        let z = MeterZone::iana("Europe/Berlin").unwrap();
        assert_eq!(z.resolve(&local(2025, 2, 30, 12, 0, 0xFF)), None);
        assert_eq!(MeterZone::Fixed(0).resolve(&local(2025, 4, 31, 12, 0, 0xFF)), None);
        assert_eq!(z.resolve(&CosemDateTime::from_bytes(&[0xFF; 12])), None);
    }
}
