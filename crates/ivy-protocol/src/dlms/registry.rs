//! The OBIS registry as data: OBIS → key, name, unit, quantity, interface class, default scaler. Built in: the
//! codes confirmed on a real EM114070 (SPEC 2.3) and the usual IEC 62056 codes; more from a user file
//! ([`ObisRegistry::extend`]).
//!
//! Scaler precedence: the scaler_unit read from the meter (attribute 3 of class 3/4) > the registry default > 1.

use super::obis::Obis;
use crate::Quantity;
use std::collections::HashMap;
use std::sync::OnceLock;

/// One registry entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ObisDef {
    /// The code.
    pub obis: Obis,
    /// Canonical key (published).
    pub key: String,
    /// Description.
    pub name: String,
    /// Unit symbol ("" when none).
    pub unit: String,
    /// What it measures.
    pub quantity: Quantity,
    /// Interface class (1 data, 3 register, 4 extended register, 8 clock, 70 disconnect control).
    pub class_id: u16,
    /// Power of ten applied to raw values when the meter's own scaler is not known (`-2` = ×0.01).
    pub default_scaler: Option<i8>,
}

impl ObisDef {
    /// Whether the value attribute has a scaler_unit (attribute 3): register and extended register classes.
    pub fn has_scaler_unit(&self) -> bool {
        matches!(self.class_id, 3 | 4)
    }
}

/// Why the registry cannot take a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The key already names another code.
    #[error("OBIS key '{0}' is already used by {1}")]
    DuplicateKey(String, String),
    /// Empty or malformed key.
    #[error("OBIS key '{0}' must be non-empty and made of A-Z, 0-9 and '_'")]
    BadKey(String),
}

/// The registry.
#[derive(Debug, Clone, Default)]
pub struct ObisRegistry {
    defs: Vec<ObisDef>,
    by_obis: HashMap<Obis, usize>,
    by_key: HashMap<String, usize>,
}

/// (A, B, C, D, E, F, key, name, unit, quantity, class, default scaler)
type Row = ([u8; 6], &'static str, &'static str, &'static str, Quantity, u16, Option<i8>);

const BUILTIN: &[Row] = &[
    // Confirmed on a real EM114070 (SPEC 2.3).
    ([1, 0, 1, 7, 0, 255], "ACTIVE_POWER_IMPORT", "Active power import", "W", Quantity::ActivePower, 3, Some(0)),
    (
        [1, 0, 3, 7, 0, 255],
        "REACTIVE_POWER_IMPORT",
        "Reactive power import",
        "var",
        Quantity::ReactivePower,
        3,
        Some(0),
    ),
    ([1, 0, 9, 7, 0, 255], "APPARENT_POWER_IMPORT", "Apparent power import", "VA", Quantity::ApparentPower, 3, Some(0)),
    ([1, 0, 11, 7, 0, 255], "CURRENT_TOTAL", "Current", "A", Quantity::Current, 3, Some(-3)),
    ([1, 0, 12, 7, 0, 255], "VOLTAGE_TOTAL", "Voltage", "V", Quantity::Voltage, 3, Some(-2)),
    ([1, 0, 13, 7, 0, 255], "POWER_FACTOR_TOTAL", "Power factor", "", Quantity::PowerFactor, 3, Some(-3)),
    ([1, 0, 14, 7, 0, 255], "FREQUENCY", "Grid frequency", "Hz", Quantity::Frequency, 3, Some(-2)),
    (
        [1, 0, 15, 8, 0, 255],
        "TOTAL_ENERGY_ABSOLUTE",
        "Active energy, absolute total",
        "kWh",
        Quantity::Energy,
        3,
        Some(-3),
    ),
    ([1, 0, 91, 7, 0, 255], "CURRENT_NEUTRAL", "Neutral current", "A", Quantity::Current, 3, Some(-3)),
    ([0, 0, 1, 0, 0, 255], "CLOCK", "Clock", "", Quantity::Clock, 8, None),
    ([0, 0, 42, 0, 0, 255], "LOGICAL_DEVICE_NAME", "Logical device name", "", Quantity::Identity, 1, None),
    ([0, 0, 96, 1, 0, 255], "SERIAL_NUMBER", "Serial number", "", Quantity::Identity, 1, None),
    ([0, 0, 96, 1, 1, 255], "MANUFACTURER_ID", "Manufacturer", "", Quantity::Identity, 1, None),
    ([0, 0, 96, 14, 0, 255], "CURRENT_TARIFF", "Active tariff", "", Quantity::Tariff, 1, None),
    // Usual IEC 62056 codes: scalers come from the meter (attribute 3).
    ([1, 0, 32, 7, 0, 255], "VOLTAGE_L1", "Voltage L1", "V", Quantity::Voltage, 3, None),
    ([1, 0, 52, 7, 0, 255], "VOLTAGE_L2", "Voltage L2", "V", Quantity::Voltage, 3, None),
    ([1, 0, 72, 7, 0, 255], "VOLTAGE_L3", "Voltage L3", "V", Quantity::Voltage, 3, None),
    ([1, 0, 31, 7, 0, 255], "CURRENT_L1", "Current L1", "A", Quantity::Current, 3, None),
    ([1, 0, 51, 7, 0, 255], "CURRENT_L2", "Current L2", "A", Quantity::Current, 3, None),
    ([1, 0, 71, 7, 0, 255], "CURRENT_L3", "Current L3", "A", Quantity::Current, 3, None),
    ([1, 0, 21, 7, 0, 255], "ACTIVE_POWER_L1", "Active power import L1", "W", Quantity::ActivePower, 3, None),
    ([1, 0, 41, 7, 0, 255], "ACTIVE_POWER_L2", "Active power import L2", "W", Quantity::ActivePower, 3, None),
    ([1, 0, 61, 7, 0, 255], "ACTIVE_POWER_L3", "Active power import L3", "W", Quantity::ActivePower, 3, None),
    ([1, 0, 33, 7, 0, 255], "POWER_FACTOR_L1", "Power factor L1", "", Quantity::PowerFactor, 3, None),
    ([1, 0, 53, 7, 0, 255], "POWER_FACTOR_L2", "Power factor L2", "", Quantity::PowerFactor, 3, None),
    ([1, 0, 73, 7, 0, 255], "POWER_FACTOR_L3", "Power factor L3", "", Quantity::PowerFactor, 3, None),
    ([1, 0, 1, 8, 0, 255], "ACTIVE_ENERGY_IMPORT", "Active energy import", "Wh", Quantity::Energy, 3, None),
    (
        [1, 0, 1, 8, 1, 255],
        "ACTIVE_ENERGY_IMPORT_T1",
        "Active energy import, tariff 1",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 1, 8, 2, 255],
        "ACTIVE_ENERGY_IMPORT_T2",
        "Active energy import, tariff 2",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 1, 8, 3, 255],
        "ACTIVE_ENERGY_IMPORT_T3",
        "Active energy import, tariff 3",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 1, 8, 4, 255],
        "ACTIVE_ENERGY_IMPORT_T4",
        "Active energy import, tariff 4",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    ([1, 0, 2, 8, 0, 255], "ACTIVE_ENERGY_EXPORT", "Active energy export", "Wh", Quantity::Energy, 3, None),
    (
        [1, 0, 2, 8, 1, 255],
        "ACTIVE_ENERGY_EXPORT_T1",
        "Active energy export, tariff 1",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 2, 8, 2, 255],
        "ACTIVE_ENERGY_EXPORT_T2",
        "Active energy export, tariff 2",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 2, 8, 3, 255],
        "ACTIVE_ENERGY_EXPORT_T3",
        "Active energy export, tariff 3",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 2, 8, 4, 255],
        "ACTIVE_ENERGY_EXPORT_T4",
        "Active energy export, tariff 4",
        "Wh",
        Quantity::Energy,
        3,
        None,
    ),
    ([1, 0, 3, 8, 0, 255], "REACTIVE_ENERGY_IMPORT", "Reactive energy import", "varh", Quantity::Energy, 3, None),
    (
        [1, 0, 3, 8, 1, 255],
        "REACTIVE_ENERGY_IMPORT_T1",
        "Reactive energy import, tariff 1",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 3, 8, 2, 255],
        "REACTIVE_ENERGY_IMPORT_T2",
        "Reactive energy import, tariff 2",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 3, 8, 3, 255],
        "REACTIVE_ENERGY_IMPORT_T3",
        "Reactive energy import, tariff 3",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 3, 8, 4, 255],
        "REACTIVE_ENERGY_IMPORT_T4",
        "Reactive energy import, tariff 4",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    ([1, 0, 4, 8, 0, 255], "REACTIVE_ENERGY_EXPORT", "Reactive energy export", "varh", Quantity::Energy, 3, None),
    (
        [1, 0, 4, 8, 1, 255],
        "REACTIVE_ENERGY_EXPORT_T1",
        "Reactive energy export, tariff 1",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 4, 8, 2, 255],
        "REACTIVE_ENERGY_EXPORT_T2",
        "Reactive energy export, tariff 2",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 4, 8, 3, 255],
        "REACTIVE_ENERGY_EXPORT_T3",
        "Reactive energy export, tariff 3",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    (
        [1, 0, 4, 8, 4, 255],
        "REACTIVE_ENERGY_EXPORT_T4",
        "Reactive energy export, tariff 4",
        "varh",
        Quantity::Energy,
        3,
        None,
    ),
    ([1, 0, 1, 6, 0, 255], "MAX_DEMAND_IMPORT", "Maximum demand, active import", "W", Quantity::Demand, 4, None),
    ([1, 0, 2, 6, 0, 255], "MAX_DEMAND_EXPORT", "Maximum demand, active export", "W", Quantity::Demand, 4, None),
    ([0, 0, 96, 7, 21, 255], "POWER_FAILURES", "Number of power failures in any phase", "", Quantity::Counter, 1, None),
    (
        [0, 0, 96, 7, 9, 255],
        "LONG_POWER_FAILURES",
        "Number of long power failures in any phase",
        "",
        Quantity::Counter,
        1,
        None,
    ),
    (
        [0, 0, 96, 7, 19, 255],
        "POWER_FAILURES_ALL_PHASES",
        "Number of power failures in all phases",
        "",
        Quantity::Counter,
        1,
        None,
    ),
    (
        [0, 0, 96, 7, 20, 255],
        "LONG_POWER_FAILURES_ALL_PHASES",
        "Number of long power failures in all phases",
        "",
        Quantity::Counter,
        1,
        None,
    ),
    ([0, 0, 96, 3, 10, 255], "DISCONNECT_CONTROL", "Disconnect control", "", Quantity::Control, 70, None),
];

/// The disconnect control object.
pub const DISCONNECT_CONTROL: Obis = Obis::new(0, 0, 96, 3, 10, 255);
/// The clock object.
pub const CLOCK: Obis = Obis::new(0, 0, 1, 0, 0, 255);
/// Logical device name.
pub const LOGICAL_DEVICE_NAME: Obis = Obis::new(0, 0, 42, 0, 0, 255);
/// Serial number.
pub const SERIAL_NUMBER: Obis = Obis::new(0, 0, 96, 1, 0, 255);

fn normalize(key: &str) -> String {
    key.chars().filter(|c| *c != '_' && *c != '-' && *c != ' ').flat_map(char::to_lowercase).collect()
}

impl ObisRegistry {
    /// The built-in registry (built once).
    pub fn builtin() -> &'static ObisRegistry {
        static BUILT: OnceLock<ObisRegistry> = OnceLock::new();
        BUILT.get_or_init(|| {
            let mut r = ObisRegistry::default();
            let defs = BUILTIN.iter().map(|(obis, key, name, unit, quantity, class_id, scaler)| ObisDef {
                obis: Obis(*obis),
                key: (*key).to_owned(),
                name: (*name).to_owned(),
                unit: (*unit).to_owned(),
                quantity: *quantity,
                class_id: *class_id,
                default_scaler: *scaler,
            });
            // The built-in rows are consistent (checked by a unit test).
            let _ = r.extend(defs);
            r
        })
    }

    /// Adds definitions; an entry for an existing OBIS code replaces it; a key naming another code is an error.
    pub fn extend(&mut self, defs: impl IntoIterator<Item = ObisDef>) -> Result<(), RegistryError> {
        for def in defs {
            if def.key.is_empty() || !def.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(RegistryError::BadKey(def.key));
            }
            let index = self.by_obis.get(&def.obis).copied().unwrap_or(self.defs.len());
            let norm = normalize(&def.key);
            if let Some(&other) = self.by_key.get(&norm)
                && other != index
            {
                let owner = self.defs.get(other).map(|d| d.obis.to_string()).unwrap_or_default();
                return Err(RegistryError::DuplicateKey(def.key, owner));
            }
            if let Some(old) = self.defs.get(index) {
                self.by_key.remove(&normalize(&old.key));
            }
            self.by_key.insert(norm, index);
            self.by_obis.insert(def.obis, index);
            if index == self.defs.len() {
                self.defs.push(def);
            } else if let Some(slot) = self.defs.get_mut(index) {
                *slot = def;
            }
        }
        Ok(())
    }

    /// Every definition.
    pub fn defs(&self) -> &[ObisDef] {
        &self.defs
    }

    /// By OBIS code.
    pub fn get(&self, obis: &Obis) -> Option<&ObisDef> {
        self.by_obis.get(obis).and_then(|i| self.defs.get(*i))
    }

    /// By code; a code of channel B = 1..=64 that is not registered itself takes the channel-0 definition
    /// (IEC 62056-61: B is the measurement channel; single-channel meters use 0 or 1, e.g. `1-1:32.7.0.255` is
    /// the L1 voltage like `1-0:32.7.0.255`).
    pub fn get_any_channel(&self, obis: &Obis) -> Option<&ObisDef> {
        self.get(obis).or_else(|| {
            let [a, b, c, d, e, f] = obis.bytes();
            (1..=64).contains(&b).then(|| self.get(&Obis::new(a, 0, c, d, e, f))).flatten()
        })
    }

    /// By key (case-insensitive; `_`, `-` ignored) or by OBIS text.
    pub fn lookup(&self, name: &str) -> Option<&ObisDef> {
        if let Ok(obis) = name.parse::<Obis>() {
            return self.get(&obis);
        }
        self.by_key.get(&normalize(name)).and_then(|i| self.defs.get(*i))
    }
}

/// Applies a power-of-ten scaler to a raw integer: the result is the double nearest to the exact decimal value
/// (division by 10^n is correctly rounded), i.e. already rounded to the scaler's resolution.
pub fn apply_scaler(raw: i128, scaler: i8) -> f64 {
    let magnitude = 10f64.powi(i32::from(scaler.unsigned_abs()));
    if scaler < 0 { raw as f64 / magnitude } else { raw as f64 * magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_codes_fall_back_to_channel_zero() {
        let r = ObisRegistry::builtin();
        let l1 = Obis::new(1, 1, 32, 7, 0, 255);
        assert_eq!(r.get(&l1), None);
        assert_eq!(r.get_any_channel(&l1).map(|d| d.key.as_str()), Some("VOLTAGE_L1"));
        assert_eq!(r.get_any_channel(&Obis::new(1, 1, 0, 2, 129, 255)), None);
        assert_eq!(r.get_any_channel(&Obis::new(1, 65, 32, 7, 0, 255)), None);
    }

    #[test]
    fn builtin_and_scaling() {
        let r = ObisRegistry::builtin();
        assert_eq!(r.defs().len(), BUILTIN.len());
        let v = r.lookup("1-0:12.7.0.255").unwrap();
        assert_eq!(v.key, "VOLTAGE_TOTAL");
        assert_eq!(apply_scaler(23636, v.default_scaler.unwrap()), 236.36);
        assert_eq!(apply_scaler(5004, -2), 50.04);
        assert_eq!(apply_scaler(12, 3), 12000.0);
        assert_eq!(r.lookup("voltage_total").unwrap().obis, v.obis);
        assert_eq!(r.get(&DISCONNECT_CONTROL).unwrap().class_id, 70);
    }

    #[test]
    fn user_definitions() {
        let mut r = ObisRegistry::builtin().clone();
        let def = ObisDef {
            obis: Obis::new(1, 0, 99, 7, 0, 255),
            key: "MY_CODE".into(),
            name: "x".into(),
            unit: "V".into(),
            quantity: Quantity::Voltage,
            class_id: 3,
            default_scaler: Some(-1),
        };
        r.extend([def.clone()]).unwrap();
        assert_eq!(r.lookup("my_code").unwrap().default_scaler, Some(-1));
        assert!(
            r.extend([ObisDef { key: "VOLTAGE_TOTAL".into(), obis: Obis::new(1, 0, 98, 7, 0, 255), ..def }]).is_err()
        );
    }
}
