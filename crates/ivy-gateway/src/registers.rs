//! Register catalogues and poll groups as the gateway uses them: the protocol crate's built-in DL/T 645 catalogue and
//! OBIS registry, extended by the user's files, and the register groups of SPEC 3 (defaults, overridable and
//! extendable in the configuration, per-meter overrides).

use crate::config::{Config, ConfigError};
use crate::error::{ErrorCode, OpError};
use ivy_protocol::Quantity;
use ivy_protocol::dlms::registry::{ObisDef, ObisRegistry};
use ivy_protocol::dlms::{AttributeDescriptor, Obis};
use ivy_protocol::dlt645::Di;
use ivy_protocol::dlt645::registers::{Catalogue, Format, RegisterDef};
use ivy_protocol::registration::MeterId;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A DLMS attribute to read, with what the registry knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObisTarget {
    /// What to read.
    pub attribute: AttributeDescriptor,
}

/// What a register name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DL/T 645 data identifier.
    Dlt645(Di),
    /// A DLMS attribute.
    Dlms(ObisTarget),
}

/// Default DL/T 645 groups (SPEC 3).
const DLT_ENERGY: &[&str] = &["COMBINED_ACTIVE_ENERGY"];
const DLT_INSTANT: &[&str] = &["VOLTAGE_A", "CURRENT_A", "ACTIVE_POWER_TOTAL", "POWER_FACTOR_TOTAL", "FREQUENCY"];
const DLT_ALL_EXTRA: &[&str] = &["FORWARD_ACTIVE_ENERGY_T1", "FORWARD_ACTIVE_ENERGY_T2", "REACTIVE_POWER_TOTAL"];
/// Default DLMS groups (SPEC 3).
const DLMS_ENERGY: &[&str] =
    &["1-0:15.8.0.255", "1-0:12.7.0.255", "1-0:11.7.0.255", "1-0:1.7.0.255", "1-0:14.7.0.255", "0-0:96.14.0.255"];
const DLMS_INSTANT: &[&str] = &[
    "1-0:12.7.0.255",
    "1-0:11.7.0.255",
    "1-0:91.7.0.255",
    "1-0:1.7.0.255",
    "1-0:3.7.0.255",
    "1-0:9.7.0.255",
    "1-0:13.7.0.255",
    "1-0:14.7.0.255",
];

/// Catalogues, registry and groups.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// DL/T 645 catalogue (built-in + user file).
    pub catalogue: Catalogue,
    /// OBIS registry (built-in + user file).
    pub obis: ObisRegistry,
    dlt_groups: BTreeMap<String, Vec<Di>>,
    dlms_groups: BTreeMap<String, Vec<ObisTarget>>,
    default_group: String,
    overrides: BTreeMap<String, crate::config::PollOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFile {
    #[serde(default)]
    register: Vec<RegisterEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterEntry {
    key: String,
    di: String,
    format: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    quantity: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObisFile {
    #[serde(default)]
    obis: Vec<ObisEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObisEntry {
    code: String,
    key: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    quantity: Option<String>,
    class_id: u16,
    #[serde(default)]
    scaler: Option<i8>,
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: problem.into() }
}

fn read_toml<T: for<'de> Deserialize<'de>>(key: &str, path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| err(key, format!("{}: {}", path.display(), crate::config::toml_error(&e))))
}

fn parse_quantity(key: &str, q: &Option<String>) -> Result<Quantity, ConfigError> {
    match q {
        None => Ok(Quantity::Other),
        Some(text) => text.parse().map_err(|e: String| err(key, e)),
    }
}

impl Resolver {
    /// Builds the resolver from the configuration, loading the user files; every problem names its key.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut catalogue = Catalogue::builtin().clone();
        if let Some(path) = &config.dlt645.register_file {
            let key = "dlt645.register_file";
            let file: RegisterFile = read_toml(key, path)?;
            let mut defs = Vec::new();
            for e in file.register {
                let di: Di =
                    e.di.parse()
                        .map_err(|_| err(key, format!("register {}: di '{}' must be 8 hex digits", e.key, e.di)))?;
                let format = Format::parse(&e.format).map_err(|f| err(key, format!("register {}: {f}", e.key)))?;
                defs.push(RegisterDef {
                    quantity: parse_quantity(key, &e.quantity)?,
                    name: e.name.unwrap_or_else(|| e.key.clone()),
                    key: e.key,
                    aliases: e.aliases,
                    di,
                    format,
                    unit: e.unit,
                });
            }
            catalogue.extend(defs).map_err(|e| err(key, e.to_string()))?;
        }
        let mut obis = ObisRegistry::builtin().clone();
        if let Some(path) = &config.dlms.obis_file {
            let key = "dlms.obis_file";
            let file: ObisFile = read_toml(key, path)?;
            let mut defs = Vec::new();
            for e in file.obis {
                let code: Obis =
                    e.code.parse().map_err(|x: ivy_protocol::dlms::obis::ObisError| err(key, x.to_string()))?;
                defs.push(ObisDef {
                    obis: code,
                    quantity: parse_quantity(key, &e.quantity)?,
                    name: e.name.unwrap_or_else(|| e.key.clone()),
                    key: e.key,
                    unit: e.unit,
                    class_id: e.class_id,
                    default_scaler: e.scaler,
                });
            }
            obis.extend(defs).map_err(|e| err(key, e.to_string()))?;
        }
        let mut r = Resolver {
            catalogue,
            obis,
            dlt_groups: BTreeMap::new(),
            dlms_groups: BTreeMap::new(),
            default_group: config.polling.group.clone(),
            overrides: config.polling.meter_overrides.clone(),
        };
        let all_dlt: Vec<&str> = DLT_ENERGY.iter().chain(DLT_INSTANT).chain(DLT_ALL_EXTRA).copied().collect();
        for (name, keys) in [("energy", DLT_ENERGY.to_vec()), ("instantaneous", DLT_INSTANT.to_vec()), ("all", all_dlt)]
        {
            let dis = keys
                .iter()
                .map(|k| r.dlt_di(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("polling", e.message))?;
            r.dlt_groups.insert(name.to_owned(), dis);
        }
        let mut all_dlms: Vec<&str> = DLMS_ENERGY.to_vec();
        for code in DLMS_INSTANT {
            if !all_dlms.contains(code) {
                all_dlms.push(code);
            }
        }
        for (name, codes) in
            [("energy", DLMS_ENERGY.to_vec()), ("instantaneous", DLMS_INSTANT.to_vec()), ("all", all_dlms)]
        {
            let targets = codes
                .iter()
                .map(|c| r.dlms_target(c, None, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("polling", e.message))?;
            r.dlms_groups.insert(name.to_owned(), targets);
        }
        for (name, keys) in &config.polling.dlt645_groups {
            let key = format!("polling.dlt645_groups.{name}");
            let dis =
                keys.iter().map(|k| r.dlt_di(k)).collect::<Result<Vec<_>, _>>().map_err(|e| err(&key, e.message))?;
            r.dlt_groups.insert(name.to_ascii_lowercase(), dis);
        }
        for (name, codes) in &config.polling.dlms_groups {
            let key = format!("polling.dlms_groups.{name}");
            let targets = codes
                .iter()
                .map(|c| r.dlms_target(c, None, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&key, e.message))?;
            r.dlms_groups.insert(name.to_ascii_lowercase(), targets);
        }
        let group = r.default_group.to_ascii_lowercase();
        if !r.dlt_groups.contains_key(&group) && !r.dlms_groups.contains_key(&group) {
            return Err(err("polling.group", format!("no group named '{}'", r.default_group)));
        }
        for (meter, o) in &config.polling.meter_overrides {
            let key = format!("polling.meter_overrides.{meter}");
            if let Some(g) = &o.group
                && !r.dlt_groups.contains_key(&g.to_ascii_lowercase())
                && !r.dlms_groups.contains_key(&g.to_ascii_lowercase())
            {
                return Err(err(&key, format!("no group named '{g}'")));
            }
            for name in o.registers.iter().flatten() {
                if r.dlt_di(name).is_err() && r.dlms_target(name, None, None).is_err() {
                    return Err(err(&key, format!("unknown register '{name}'")));
                }
            }
        }
        Ok(r)
    }

    /// A DL/T 645 DI for a key, alias or 8-hex-digit DI.
    pub fn dlt_di(&self, name: &str) -> Result<Di, OpError> {
        if let Some(def) = self.catalogue.lookup(name) {
            return Ok(def.di);
        }
        if let Ok(di) = name.parse::<Di>()
            && name.trim_start_matches("0x").chars().all(|c| c.is_ascii_hexdigit())
        {
            return Ok(di);
        }
        Err(OpError::new(ErrorCode::UnknownRegister, format!("unknown DL/T 645 register '{name}'")))
    }

    /// A DLMS attribute for an OBIS code or a registry key; class and attribute default from the registry (and 2).
    pub fn dlms_target(&self, name: &str, class_id: Option<u16>, attribute: Option<u8>) -> Result<ObisTarget, OpError> {
        let unknown = || OpError::new(ErrorCode::UnknownRegister, format!("unknown DLMS register '{name}'"));
        let (obis, def) = match name.parse::<Obis>() {
            Ok(o) => (o, self.obis.get(&o)),
            Err(_) => {
                let def = self.obis.lookup(name).ok_or_else(unknown)?;
                (def.obis, Some(def))
            }
        };
        let class_id = class_id.or(def.map(|d| d.class_id)).ok_or_else(|| {
            OpError::new(ErrorCode::InvalidParams, format!("'{name}' is not in the OBIS registry: give classId"))
        })?;
        Ok(ObisTarget { attribute: AttributeDescriptor::new(class_id, obis, attribute.unwrap_or(2)) })
    }

    /// A DL/T 645 group.
    pub fn dlt_group(&self, name: &str) -> Option<&[Di]> {
        self.dlt_groups.get(&name.to_ascii_lowercase()).map(Vec::as_slice)
    }

    /// A DLMS group.
    pub fn dlms_group(&self, name: &str) -> Option<&[ObisTarget]> {
        self.dlms_groups.get(&name.to_ascii_lowercase()).map(Vec::as_slice)
    }

    /// Group names (both protocols).
    pub fn group_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.dlt_groups.keys().chain(self.dlms_groups.keys()).cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    fn poll_override(&self, meter: &MeterId) -> Option<&crate::config::PollOverride> {
        self.overrides.get(meter.as_str())
    }

    /// Whether `meter` is polled, and how often (ms), given the global settings.
    pub fn poll_settings(&self, meter: &MeterId, enabled: bool, interval_ms: u64) -> (bool, u64) {
        let o = self.poll_override(meter);
        (o.and_then(|o| o.enabled).unwrap_or(enabled), o.and_then(|o| o.interval_ms).unwrap_or(interval_ms))
    }

    /// The DIs to poll for `meter`.
    pub fn dlt_poll_plan(&self, meter: &MeterId) -> Vec<Di> {
        let o = self.poll_override(meter);
        if let Some(list) = o.and_then(|o| o.registers.as_ref()) {
            return list.iter().filter_map(|n| self.dlt_di(n).ok()).collect();
        }
        let group = o.and_then(|o| o.group.as_deref()).unwrap_or(&self.default_group);
        self.dlt_group(group).or_else(|| self.dlt_group("all")).map(<[Di]>::to_vec).unwrap_or_default()
    }

    /// The attributes to poll for `meter`.
    pub fn dlms_poll_plan(&self, meter: &MeterId) -> Vec<ObisTarget> {
        let o = self.poll_override(meter);
        if let Some(list) = o.and_then(|o| o.registers.as_ref()) {
            return list.iter().filter_map(|n| self.dlms_target(n, None, None).ok()).collect();
        }
        let group = o.and_then(|o| o.group.as_deref()).unwrap_or(&self.default_group);
        self.dlms_group(group).or_else(|| self.dlms_group("all")).map(<[ObisTarget]>::to_vec).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_groups_match_the_spec() {
        let r = Resolver::from_config(&Config::default()).unwrap();
        assert_eq!(r.dlt_group("all").unwrap().len(), 9);
        assert_eq!(r.dlt_group("energy").unwrap(), &[Di::new(0)]);
        assert_eq!(r.dlms_group("energy").unwrap().len(), 6);
        assert_eq!(r.dlms_group("instantaneous").unwrap().len(), 8);
        assert_eq!(r.dlms_group("all").unwrap().len(), 10);
        assert_eq!(r.dlt_di("voltage_a").unwrap(), Di::new(0x0201_0100));
        assert_eq!(r.dlt_di("02800002").unwrap(), Di::new(0x0280_0002));
        assert!(r.dlt_di("nope").is_err());
        let t = r.dlms_target("VOLTAGE_TOTAL", None, None).unwrap();
        assert_eq!(t.attribute.class_id, 3);
        assert!(r.dlms_target("1-0:99.9.9.255", None, None).is_err());
        assert_eq!(r.dlms_target("1-0:99.9.9.255", Some(1), Some(2)).unwrap().attribute.class_id, 1);
    }

    #[test]
    fn user_files_and_bad_groups() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("regs.toml");
        std::fs::write(
            &reg,
            "[[register]]\nkey = \"MY_REG\"\ndi = \"03000001\"\nformat = \"XXXX\"\nquantity = \"counter\"\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.dlt645.register_file = Some(reg);
        c.polling.dlt645_groups.insert("mine".into(), vec!["MY_REG".into(), "VOLTAGE_A".into()]);
        let r = Resolver::from_config(&c).unwrap();
        assert_eq!(r.dlt_group("mine").unwrap(), &[Di::new(0x0300_0001), Di::new(0x0201_0100)]);

        c.polling.dlt645_groups.insert("bad".into(), vec!["NOPE".into()]);
        let e = Resolver::from_config(&c).unwrap_err();
        assert!(e.key.contains("polling.dlt645_groups.bad"), "{e}");
    }
}
