//! Meter id → the session that holds the meter.
//!
//! The original gateway's worst bug: when a meter reconnected, the *old* connection's close unregistered the meter
//! that the *new* connection had just registered. Here every registration records the connection id that made it,
//! and [`Registry::unregister`] only removes an entry when that same connection asks.

use super::SessionHandle;
use crate::lock::lock;
use crate::model::Source;
use ivy_protocol::registration::MeterId;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the registry knows about a connected meter.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterInfo {
    /// Protocol family.
    pub protocol: Source,
    /// Peer IP.
    pub ip: String,
    /// Peer port.
    pub port: u16,
    /// When the meter was identified on this connection (ms since epoch).
    pub connected_at: u64,
    /// Identified on the TLS meter port by a client certificate that names it (proven, unlike plain TCP).
    pub certified: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    handle: SessionHandle,
    info: MeterInfo,
    /// When the id was last contested while this connection held it or took it over.
    contested_at: Option<Instant>,
}

/// Outcome of [`Registry::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The meter was not connected before: the claim is registered.
    New,
    /// The meter was held by a connection whose session has already ended; the claim replaced it (returned so the
    /// caller can make sure it is closed).
    Replaced(SessionHandle),
    /// This connection already held the meter (a repeated heartbeat).
    Refreshed,
    /// Another live connection holds the meter; nothing changed. The caller decides (the duplicate-identity
    /// policy) and calls [`Registry::take_over`] if the claim wins.
    Held(SessionHandle, MeterInfo),
}

/// A take-over found the id held by a third connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceLost;

/// Most meter ids remembered for the "seen since start" figure: ids are validated and a fleet is finite, but the
/// set is capped anyway against id-spraying peers.
const MAX_SEEN: usize = 1_000_000;

/// The registry. Its locks guard only the maps, never protocol state, and are held for map operations only.
#[derive(Debug, Default)]
pub struct Registry {
    meters: Mutex<HashMap<MeterId, Entry>>,
    /// Every meter id registered since start (the "meters total" figure).
    seen: Mutex<HashSet<MeterId>>,
    /// DLMS meters whose associations are being rejected: their back-off state (for `/api/meters/{id}`).
    dlms_rejections: Mutex<HashMap<MeterId, Value>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<MeterId, Entry>> {
        lock(&self.meters)
    }

    /// Records (or, with `None`, clears) the association back-off state of a DLMS meter.
    pub fn set_dlms_rejection(&self, meter_id: &MeterId, state: Option<Value>) {
        let mut map = lock(&self.dlms_rejections);
        match state {
            Some(v) => {
                // Bounded like the seen set: one entry per rejecting meter.
                if map.len() < MAX_SEEN || map.contains_key(meter_id) {
                    map.insert(meter_id.clone(), v);
                }
            }
            None => {
                map.remove(meter_id);
            }
        }
    }

    /// The association back-off state of a DLMS meter that is rejecting associations.
    pub fn dlms_rejection(&self, meter_id: &MeterId) -> Option<Value> {
        lock(&self.dlms_rejections).get(meter_id).cloned()
    }

    /// Meters registered since start (online or not).
    pub fn seen_total(&self) -> usize {
        lock(&self.seen).len()
    }

    /// Claims `meter_id` for `handle`'s connection: registers it unless another live connection holds it.
    pub fn claim(&self, meter_id: &MeterId, handle: SessionHandle, info: MeterInfo) -> Claim {
        let mut map = self.map();
        match map.get(meter_id) {
            Some(e) if e.handle.conn_id() == handle.conn_id() => return Claim::Refreshed,
            Some(e) if !e.handle.is_closed() => return Claim::Held(e.handle.clone(), e.info.clone()),
            _ => {}
        }
        let previous = map.insert(meter_id.clone(), Entry { handle, info, contested_at: None });
        drop(map);
        match previous {
            Some(old) => Claim::Replaced(old.handle),
            None => {
                let mut seen = lock(&self.seen);
                if seen.len() < MAX_SEEN {
                    seen.insert(meter_id.clone());
                }
                Claim::New
            }
        }
    }

    /// Gives `meter_id` to `handle`'s connection if connection `from_conn` still holds it (or nobody does), and
    /// marks the id contested. Returns the previous holder's handle, or [`RaceLost`] when a third connection got
    /// the id meanwhile (the caller is then refused).
    pub fn take_over(
        &self,
        meter_id: &MeterId,
        handle: SessionHandle,
        info: MeterInfo,
        from_conn: u64,
    ) -> Result<Option<SessionHandle>, RaceLost> {
        let mut map = self.map();
        if map.get(meter_id).is_some_and(|e| e.handle.conn_id() != from_conn) {
            return Err(RaceLost);
        }
        let entry = Entry { handle, info, contested_at: Some(Instant::now()) };
        Ok(map.insert(meter_id.clone(), entry).map(|old| old.handle))
    }

    /// Marks `meter_id` contested while connection `conn_id` holds it (a newcomer was refused).
    pub fn mark_contested(&self, meter_id: &MeterId, conn_id: u64) {
        if let Some(e) = self.map().get_mut(meter_id).filter(|e| e.handle.conn_id() == conn_id) {
            e.contested_at = Some(Instant::now());
        }
    }

    /// Whether `meter_id` was contested less than `window` ago (secrets are withheld then).
    pub fn contested_within(&self, meter_id: &MeterId, window: Duration) -> bool {
        self.map().get(meter_id).and_then(|e| e.contested_at).is_some_and(|t| t.elapsed() < window)
    }

    /// Removes `meter_id` if, and only if, connection `conn_id` still holds it. Returns what the registry knew of
    /// that connection (its `connected_at` names it in the offline status), or `None` when it did not hold it.
    pub fn unregister(&self, meter_id: &MeterId, conn_id: u64) -> Option<MeterInfo> {
        let mut map = self.map();
        match map.get(meter_id) {
            Some(e) if e.handle.conn_id() == conn_id => map.remove(meter_id).map(|e| e.info),
            _ => None,
        }
    }

    /// The session holding `meter_id`.
    pub fn get(&self, meter_id: &MeterId) -> Option<(SessionHandle, MeterInfo)> {
        self.map().get(meter_id).map(|e| (e.handle.clone(), e.info.clone()))
    }

    /// Whether connection `conn_id` holds `meter_id`.
    pub fn is_held_by(&self, meter_id: &MeterId, conn_id: u64) -> bool {
        self.map().get(meter_id).is_some_and(|e| e.handle.conn_id() == conn_id)
    }

    /// Number of meters online.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no meter is online.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Every online meter with its info (a snapshot; the map may change right after).
    pub fn list(&self) -> Vec<(MeterId, MeterInfo)> {
        self.map().iter().map(|(k, e)| (k.clone(), e.info.clone())).collect()
    }

    /// Every distinct session handle (for shutdown).
    pub fn handles(&self) -> Vec<SessionHandle> {
        let mut seen = std::collections::HashSet::new();
        self.map().values().filter(|e| seen.insert(e.handle.conn_id())).map(|e| e.handle.clone()).collect()
    }
}
