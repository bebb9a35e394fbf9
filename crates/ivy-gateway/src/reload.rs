//! Reloading on SIGHUP: what can change while meters stay connected, and the report of what did.
//!
//! Reloaded in place: the users (users file and `mqtt.users`), the alarm rules (`[alarms]`), the poll groups,
//! per-meter poll overrides and default group (`polling.group`, `polling.*_groups`, `polling.meter_overrides`),
//! the register catalogue files, and the HTTPS certificate files. Every other changed key is reported as needing
//! a restart and keeps its running value; so do the MQTT TLS certificate files (the embedded broker reads them
//! once, at start).

use crate::config::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A value that is replaced while readers keep using the one they took (`get` is a cheap `Arc` clone).
#[derive(Debug)]
pub struct Current<T>(RwLock<Arc<T>>);

impl<T> Current<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Current(RwLock::new(Arc::new(value)))
    }

    /// The value in effect now.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `value` in effect for every later [`Current::get`].
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

/// Configuration keys (dotted TOML paths, and their sub-keys) that a reload applies in place.
pub const RELOADABLE: &[&str] = &[
    "alarms",
    "polling.group",
    "polling.dlt645_groups",
    "polling.dlms_groups",
    "polling.meter_overrides",
    "dlt645.register_file",
    "dlms.obis_file",
    "mqtt.users",
];

/// Whether a change of `key` is applied by a reload.
pub fn is_reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|p| key == *p || key.strip_prefix(p).is_some_and(|rest| rest.starts_with('.')))
}

/// The dotted keys whose values differ between `old` and `new` (tables are compared key by key, arrays whole).
/// Only names are returned, never values: some are secrets.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    if let (Ok(o), Ok(n)) = (toml::Value::try_from(old), toml::Value::try_from(new)) {
        flatten("", &o, &mut a);
        flatten("", &n, &mut b);
    }
    let mut keys: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// What a reload did. Logged as one line per part; `failed` parts kept their previous value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Changes now in effect.
    pub applied: Vec<String>,
    /// Changed settings that keep their running value until the gateway is restarted.
    pub needs_restart: Vec<String>,
    /// Parts that could not be reloaded (the previous value stays in effect), with why.
    pub failed: Vec<String>,
}

impl ReloadReport {
    /// Logs the report: one line each, warnings for what needs a restart or failed.
    pub fn log(&self) {
        if self.applied.is_empty() && self.needs_restart.is_empty() && self.failed.is_empty() {
            tracing::info!("reload: nothing changed");
        }
        for a in &self.applied {
            tracing::info!(change = %a, "reload: applied");
        }
        for r in &self.needs_restart {
            tracing::warn!(setting = %r, "reload: changed, needs a restart to take effect");
        }
        for f in &self.failed {
            tracing::error!(problem = %f, "reload: not applied, previous value kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_classified() {
        let old = Config::default();
        let mut new = old.clone();
        new.alarms.overvoltage_v = 240.0;
        new.polling.dlt645_groups.insert("mine".into(), vec!["VOLTAGE_A".into()]);
        new.mqtt.port = 1884;
        new.dlt645.password = "123456".into();
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, ["alarms.overvoltage_v", "dlt645.password", "mqtt.port", "polling.dlt645_groups.mine"]);
        let restart: Vec<_> = keys.iter().filter(|k| !is_reloadable(k)).collect();
        assert_eq!(restart, ["dlt645.password", "mqtt.port"]);
        assert!(!is_reloadable("alarmsx"), "a prefix matches whole key segments only");
        assert!(changed_keys(&old, &old.clone()).is_empty());
    }
}
