//! DLMS values → normalised readings, once, where they are decoded (pure: the registry, the meter's scalers,
//! its zone and the timestamps are passed in).
//!
//! Scaler precedence for integer values: the scaler carried in the push (`{OBIS, value, {scaler, unit}}`) > the
//! scaler_unit read from the meter (attribute 3) > the meter's configured scaler table (`dlms.scaler_tables`) >
//! the OBIS registry's default. With none of these the raw value is published with `scalerKnown: false`, unless
//! the object is known not to be a register (interface classes other than 3 and 4 have no scaler).
//! Date-times without a deviation are read in the meter's zone and rendered with an explicit offset.

use crate::model::{Reading, ReadingMeta, ReadingValue, Source};
use ivy_protocol::dlms::apdu::AttributeDescriptor;
use ivy_protocol::dlms::json::{data_json, json_int};
use ivy_protocol::dlms::push::Push;
use ivy_protocol::dlms::registry::{CLOCK, apply_scaler};
use ivy_protocol::dlms::units::unit_symbol;
use ivy_protocol::dlms::{CosemDateTime, Data, MeterZone, Obis, ObisRegistry};
use ivy_protocol::registration::MeterId;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// What the gateway knows about one meter's values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ValueContext<'a> {
    /// The OBIS registry.
    pub(crate) registry: &'a ObisRegistry,
    /// scaler_unit read from the meter (scaler, unit code).
    pub(crate) meter_scalers: &'a HashMap<Obis, (i8, u8)>,
    /// The meter's configured scaler table.
    pub(crate) table: Option<&'a BTreeMap<Obis, i8>>,
    /// The zone of the meter's clock.
    pub(crate) zone: &'a MeterZone,
}

/// The value of `attribute` (class 0 = not known) as a reading stamped `ts`; `pushed` is a scaler_unit carried
/// with the value.
pub(crate) fn reading(
    ctx: &ValueContext<'_>,
    meter: &MeterId,
    attribute: &AttributeDescriptor,
    value: &Data,
    pushed: Option<(i8, u8)>,
    ts: u64,
    mut meta: ReadingMeta,
) -> Option<Reading> {
    let def = ctx.registry.get_any_channel(&attribute.obis);
    let base_key = def.map(|d| d.key.clone()).unwrap_or_else(|| obis_key(&attribute.obis));
    let key = if attribute.attribute == 2 { base_key } else { format!("{base_key}_ATTR{}", attribute.attribute) };
    let quantity = def.map(|d| d.quantity).unwrap_or(ivy_protocol::Quantity::Other);
    let registry_unit = def.map(|d| d.unit.clone()).filter(|u| !u.is_empty());
    let class = Some(attribute.class_id).filter(|c| *c != 0).or(def.map(|d| d.class_id));
    let (reading_value, raw_value, unit) = match value {
        Data::Float32(_) | Data::Float64(_) => {
            (ReadingValue::Number(value.as_f64()?), json!(value.as_f64()), registry_unit)
        }
        v if v.as_i128().is_some() && !matches!(v, Data::Boolean(_) | Data::Enum(_)) => {
            let raw = v.as_i128()?;
            let with_unit = |(s, code): (i8, u8)| {
                let unit = unit_symbol(code).filter(|u| !u.is_empty()).map(str::to_owned);
                normalise_unit(s, unit, registry_unit.clone())
            };
            let known = pushed
                .map(with_unit)
                .or_else(|| ctx.meter_scalers.get(&attribute.obis).copied().map(with_unit))
                .or_else(|| ctx.table.and_then(|t| t.get(&attribute.obis)).map(|s| (*s, registry_unit.clone())))
                .or_else(|| def.and_then(|d| d.default_scaler).map(|s| (s, registry_unit.clone())));
            let (scaler, unit) = match known {
                Some(k) => {
                    meta.scaler_known = Some(true);
                    k
                }
                // Data objects (class 1, ...) have no scaler: the value is the value.
                None if class.is_some_and(|c| !matches!(c, 3 | 4)) => (0, registry_unit),
                None => {
                    meta.scaler_known = Some(false);
                    (0, registry_unit)
                }
            };
            (ReadingValue::Number(apply_scaler(raw, scaler)), json_int(raw), unit)
        }
        Data::Boolean(b) => (ReadingValue::Number(f64::from(u8::from(*b))), json!(b), None),
        Data::Enum(e) => (ReadingValue::Number(f64::from(*e)), json!(e), None),
        Data::OctetString(b) if b.len() == 12 && attribute.obis == CLOCK || matches!(value, Data::DateTime(_)) => {
            let bytes: [u8; 12] = match value {
                Data::DateTime(b) => *b,
                Data::OctetString(b) => b.as_slice().try_into().ok()?,
                _ => return None,
            };
            let t = CosemDateTime::from_bytes(&bytes);
            let text = ctx.zone.resolve(&t).map(|z| z.iso()).or_else(|| t.iso()).unwrap_or_default();
            (ReadingValue::Text(text), json!(hex::encode(bytes)), None)
        }
        other => match other.as_text() {
            Some(text) => (ReadingValue::Text(text), json!(other.as_bytes().map(hex::encode)), None),
            None => (ReadingValue::Json(Value::Object(data_json(other))), Value::Null, None),
        },
    };
    Some(Reading {
        meter_id: meter.clone(),
        source: Source::Dlms,
        register: key,
        data_id: attribute.obis.to_string(),
        value: reading_value,
        raw_value,
        unit,
        quantity,
        ts,
        meta,
    })
}

/// The readings of a decoded push: stamped with its capture time (resolved in the meter's zone) when it has one.
pub(crate) fn push_readings(
    ctx: &ValueContext<'_>,
    meter: &MeterId,
    push: &Push,
    received_at: u64,
    tolerance_ms: u64,
) -> Vec<Reading> {
    let (ts, meta) =
        super::meter_time::stamp(push.capture_time.as_ref().map(|(t, _)| t), ctx.zone, received_at, tolerance_ms);
    push.values
        .iter()
        .filter_map(|v| reading(ctx, meter, &v.descriptor(0), &v.value, v.scaler_unit, ts, meta))
        .collect()
}

/// `OBIS_1_0_12_7_0_255` for codes the registry does not name.
pub(crate) fn obis_key(o: &Obis) -> String {
    let [a, b, c, d, e, f] = o.bytes();
    format!("OBIS_{a}_{b}_{c}_{d}_{e}_{f}")
}

/// The meter's scaler and unit, converted to the registry's unit when it is the same unit with a `k` prefix
/// (Wh → kWh): the published unit stays the one clients expect.
pub(crate) fn normalise_unit(
    scaler: i8,
    meter_unit: Option<String>,
    registry_unit: Option<String>,
) -> (i8, Option<String>) {
    match (meter_unit, registry_unit) {
        (Some(m), Some(r)) if r == format!("k{m}") => (scaler.saturating_sub(3), Some(r)),
        (Some(m), _) => (scaler, Some(m)),
        (None, r) => (scaler, r),
    }
}

/// The scaler table of `meter`: the first `dlms.scaler_tables` entry that applies (codes were validated at start).
pub(crate) fn scaler_table(tables: &[crate::config::ScalerTable], meter: &str) -> Option<BTreeMap<Obis, i8>> {
    let t = tables.iter().find(|t| t.applies_to(meter))?;
    Some(t.scalers.iter().filter_map(|(code, s)| code.parse::<Obis>().ok().map(|o| (o, *s))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TsSource;
    use ivy_protocol::dlms::apdu::Apdu;
    use ivy_protocol::dlms::push::decode_notification;

    fn readings(
        hex: &str,
        table: Option<&BTreeMap<Obis, i8>>,
        zone: &MeterZone,
        received: u64,
    ) -> HashMap<String, Reading> {
        let registry = ObisRegistry::builtin();
        let scalers = HashMap::new();
        let ctx = ValueContext { registry, meter_scalers: &scalers, table, zone };
        let apdu = Apdu::parse(&hex::decode(hex.replace(' ', "")).unwrap()).unwrap();
        let push = decode_notification(&apdu, &[]).unwrap();
        let meter = MeterId::new("m1").unwrap();
        push_readings(&ctx, &meter, &push, received, 86_400_000).into_iter().map(|r| (r.data_id.clone(), r)).collect()
    }

    #[test]
    fn units_are_normalised_to_the_registry() {
        assert_eq!(normalise_unit(0, Some("Wh".into()), Some("kWh".into())), (-3, Some("kWh".into())));
        assert_eq!(normalise_unit(-2, Some("V".into()), Some("V".into())), (-2, Some("V".into())));
        assert_eq!(normalise_unit(1, None, Some("W".into())), (1, Some("W".into())));
        assert_eq!(obis_key(&Obis::new(1, 0, 99, 1, 0, 255)), "OBIS_1_0_99_1_0_255");
    }

    #[test]
    fn example_a_values() {
        let r = readings(
            "0f40000000000103 0203 0906 0100200700ff 120944 0202 0fff 1623  0203 0906 0100010700ff 0600000011 0202 \
             0f00 161b  0202 0906 0101000281ff 0a0b 4149444f4e5f5630303031",
            None,
            &MeterZone::Fixed(0),
            5,
        );
        let v = &r["1-0:32.7.0.255"];
        assert_eq!((v.value.as_f64(), v.unit.as_deref(), v.register.as_str()), (Some(237.2), Some("V"), "VOLTAGE_L1"));
        assert_eq!(v.meta.scaler_known, Some(true));
        assert_eq!((v.ts, v.meta.ts_source), (5, TsSource::Gateway));
        assert_eq!(r["1-0:1.7.0.255"].value.as_f64(), Some(17.0));
        assert_eq!(r["1-1:0.2.129.255"].value, ReadingValue::Text("AIDON_V0001".into()));
        assert_eq!(r["1-1:0.2.129.255"].register, "OBIS_1_1_0_2_129_255");
    }

    #[test]
    fn example_b_channel_codes_and_local_capture_time() {
        let oslo = MeterZone::iana("Europe/Oslo").unwrap();
        let r = readings(
            "0f00000000 0c07e80301050c251eff800000 0205 0a09 4c4953545f56303031 0906 0101200700ff 1200e2 0906 \
             0101010700ff 0600000010",
            None,
            &oslo,
            1_709_293_060_000,
        );
        let v = &r["1-1:32.7.0.255"];
        assert_eq!((v.value.as_f64(), v.unit.as_deref()), (Some(226.0), Some("V")));
        // No scaler anywhere for the L1 voltage: raw, and flagged.
        assert_eq!(v.meta.scaler_known, Some(false));
        let p = &r["1-1:1.7.0.255"];
        assert_eq!((p.value.as_f64(), p.unit.as_deref(), p.meta.scaler_known), (Some(16.0), Some("W"), Some(true)));
        assert_eq!(p.ts, 1_709_293_050_000);
        assert_eq!(p.meta.ts_source, TsSource::Meter);
        assert_eq!(p.meta.received_at, Some(1_709_293_060_000));
        assert!(!p.meta.ts_skewed);
    }

    #[test]
    fn example_c_scaler_table_and_capture_time() {
        let hex = "0f00020b41 0c07e9051005172d0000ff8880 0202 0202 0906 0100010800ff 06000000f6 0202 0906 0100200700ff \
                   120915";
        let r = readings(hex, None, &MeterZone::Fixed(0), 1_800_000_000_000);
        let v = &r["1-0:32.7.0.255"];
        assert_eq!((v.value.as_f64(), v.meta.scaler_known), (Some(2325.0), Some(false)));
        assert_eq!(v.ts, 1_747_431_900_000);
        assert!(v.meta.ts_skewed);
        let table: BTreeMap<Obis, i8> = [("1-0:32.7.0.255".parse().unwrap(), -1)].into_iter().collect();
        let r = readings(hex, Some(&table), &MeterZone::Fixed(0), 1_747_431_900_000);
        assert_eq!(
            (r["1-0:32.7.0.255"].value.as_f64(), r["1-0:32.7.0.255"].meta.scaler_known),
            (Some(232.5), Some(true))
        );
    }

    #[test]
    fn clocks_without_deviation_get_the_zone_offset() {
        let registry = ObisRegistry::builtin();
        let scalers = HashMap::new();
        let zone = MeterZone::iana("Asia/Shanghai").unwrap();
        let ctx = ValueContext { registry, meter_scalers: &scalers, table: None, zone: &zone };
        let clock = Data::OctetString(hex::decode("07ea011e05042213008000ff").unwrap());
        let meter = MeterId::new("m1").unwrap();
        let r = reading(&ctx, &meter, &AttributeDescriptor::new(8, CLOCK, 2), &clock, None, 1, ReadingMeta::default())
            .unwrap();
        assert_eq!(r.value, ReadingValue::Text("2026-01-30T04:34:19+08:00".into()));
        // A data object (class 1) has no scaler: not flagged.
        let tariff = reading(
            &ctx,
            &meter,
            &AttributeDescriptor::new(1, Obis::new(0, 0, 96, 14, 0, 255), 2),
            &Data::Unsigned(2),
            None,
            1,
            ReadingMeta::default(),
        )
        .unwrap();
        assert_eq!(tariff.meta.scaler_known, None);
    }
}
