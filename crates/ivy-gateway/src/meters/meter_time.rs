//! Meter time: which zone a meter's clock is in (configuration), and how a reading is stamped when the meter
//! gives a capture time. Pure: the arrival time is passed in.

use crate::config::MetersConfig;
use crate::model::{ReadingMeta, TsSource};
use ivy_protocol::dlms::{CosemDateTime, MeterZone};

/// The zone of `meter`'s clock. Precedence: the meter's `timezone`, `meters.timezone`, the meter's
/// `clock_utc_offset_minutes`, `meters.clock_utc_offset_minutes`.
pub(crate) fn zone_for(cfg: &MetersConfig, meter: &str) -> MeterZone {
    let o = cfg.meter_overrides.get(meter);
    let named = o.and_then(|o| o.timezone.as_ref()).or(cfg.timezone.as_ref());
    if let Some(zone) = named.and_then(|z| z.get()) {
        return zone.clone();
    }
    MeterZone::Fixed(o.and_then(|o| o.clock_utc_offset_minutes).unwrap_or(cfg.clock_utc_offset_minutes))
}

/// `ts` and provenance of the readings of one push: the capture time resolved in `zone` when the meter gave one
/// (flagged when further than `tolerance_ms` from `received_at`), else the arrival time.
pub(crate) fn stamp(
    capture: Option<&CosemDateTime>,
    zone: &MeterZone,
    received_at: u64,
    tolerance_ms: u64,
) -> (u64, ReadingMeta) {
    let resolved = capture.and_then(|t| zone.resolve(t)).and_then(|z| u64::try_from(z.unix_ms).ok());
    match resolved {
        Some(ts) => (
            ts,
            ReadingMeta {
                received_at: Some(received_at),
                ts_source: TsSource::Meter,
                ts_skewed: ts.abs_diff(received_at) > tolerance_ms,
                scaler_known: None,
            },
        ),
        None => (received_at, ReadingMeta::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MeterOverride;

    #[test]
    fn zone_precedence() {
        let mut c = MetersConfig { clock_utc_offset_minutes: 60, ..MetersConfig::default() };
        assert_eq!(zone_for(&c, "a"), MeterZone::Fixed(60));
        c.meter_overrides
            .insert("a".into(), MeterOverride { clock_utc_offset_minutes: Some(-300), ..Default::default() });
        assert_eq!(zone_for(&c, "a"), MeterZone::Fixed(-300));
        c.timezone = Some("Europe/Berlin".into());
        assert_eq!(zone_for(&c, "a").name(), "Europe/Berlin");
        assert_eq!(zone_for(&c, "b").name(), "Europe/Berlin");
        c.meter_overrides
            .insert("a".into(), MeterOverride { timezone: Some("Asia/Shanghai".into()), ..Default::default() });
        assert_eq!(zone_for(&c, "a").name(), "Asia/Shanghai");
    }

    #[test]
    fn capture_time_stamps_and_flags() {
        // 2025-05-16 23:45 with deviation -120 = 21:45Z.
        let b: [u8; 12] = hex::decode("07e9051005172d0000ff8880").unwrap().try_into().unwrap();
        let t = CosemDateTime::from_bytes(&b);
        let zone = MeterZone::Fixed(0);
        let received = 1_747_431_930_000;
        let (ts, meta) = stamp(Some(&t), &zone, received, 86_400_000);
        assert_eq!(ts, 1_747_431_900_000);
        assert_eq!(meta.ts_source, TsSource::Meter);
        assert_eq!(meta.received_at, Some(received));
        assert!(!meta.ts_skewed);
        let (_, meta) = stamp(Some(&t), &zone, received + 2 * 86_400_000, 86_400_000);
        assert!(meta.ts_skewed);
        // No capture time, or a wildcard one: the arrival time.
        assert_eq!(stamp(None, &zone, received, 1000), (received, ReadingMeta::default()));
        let wild = CosemDateTime::from_bytes(&[0xFF; 12]);
        assert_eq!(stamp(Some(&wild), &zone, received, 1000).1.ts_source, TsSource::Gateway);
    }
}
