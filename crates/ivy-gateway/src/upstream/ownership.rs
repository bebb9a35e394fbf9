//! Which gateway owns a meter on a broker shared by several gateways (SPEC 4.1 "several gateways on one cluster";
//! docs/MQTT.md "Several gateways on one broker"). Sans-IO: statuses and received publishes in, [`Action`]s out; no
//! tokio, no sockets, no clock reads. The upstream client drives it and carries out the actions.
//!
//! **Subscriptions.** A gateway subscribes to `{p}/meters/{id}/command/request` and `{p}/meters/{id}/status` when a
//! meter comes online here and unsubscribes both when it goes offline here, so a command reaches exactly the gateway
//! that can execute it. After a CONNACK without a session (`session_present = false`) every held meter is
//! subscribed again; with a session the broker kept them.
//!
//! **Ordering connections.** Behind a load balancer a meter can move from gateway A to gateway B while A still
//! holds the old, half-open socket, and A's offline status can reach the broker after B's online. Every status
//! names its connection by `(connectedAt, gatewayId)` ([`ConnectionKey`], ordered by `connectedAt`, then
//! `gatewayId`); the newest connection is the greatest. Gateways need distinct `gateway.gateway_id`s and clocks
//! kept in step (NTP): skew larger than the time between two reconnections of a meter inverts their order, and
//! two connections in the same millisecond are ordered by gateway id, not by which came last.
//!
//! **Re-assertion.** The gateway holding a meter's newest known connection re-publishes that connection's retained
//! online status whenever it sees, on the meter's status topic, a status (online, offline, or an empty retained
//! message) of an *older* connection. It never reacts to its own echo (same key), nor to newer connections, nor
//! while it knows of a newer connection than the one it holds (a stale socket): each reaction comes from a strictly
//! newer connection than what it answers, so two gateways cannot flap, and the last status applied at the broker is
//! the newest holder's.
//!
//! **Suppressed offlines.** [`Ownership::should_send`] is false for an offline status when the last status this
//! gateway saw on the meter's topic names a newer connection *and* every online status this gateway published for
//! the meter has come back to it (its echo was delivered): then the broker already applied the newer status after
//! everything this gateway said, and the offline would only overwrite it. While an online of ours is still in
//! flight the offline is sent: our online could land after the newer status, and without the offline it would
//! stay retained after the newer connection ends. Subscriptions must not set MQTT 5 `no_local` (echoes count). An
//! echo is recognised by its exact bytes; a re-asserted status carries [`REASSERTED_FIELD`] (1, 2, ...) so that no
//! two statuses this gateway sends are alike, and a retained copy of an earlier one, delivered again on a new
//! subscription, cannot pass for the echo of a later one.
//!
//! **Bounds.** State exists only for meters this gateway holds, plus at most [`RECENT_CAPACITY`] meters it held
//! recently (the oldest forgotten first: a forgotten meter's offline is simply sent). Publishes for other meters are
//! ignored. A malformed status payload is ignored and counted ([`Ownership::malformed`]); nothing here panics on
//! received bytes.

use crate::model::StatusChange;
use crate::mqtt::topics::TopicPrefix;
use crate::mqtt::{OutboundMessage, Qos};
use bytes::Bytes;
use ivy_protocol::registration::MeterId;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Meters no longer held whose state is kept (for [`Ownership::should_send`] of their late offline statuses).
pub const RECENT_CAPACITY: usize = 100_000;

/// Own online statuses awaiting their echo that are remembered per meter; past this, offlines of the meter are
/// always sent (the safe side).
const MAX_UNECHOED: usize = 8;

/// The field a re-asserted status carries (1 for the first re-assertion of a connection's status, then 2, ...):
/// it tells the backend the status was repaired, and makes every status this gateway sends distinct, so an echo
/// names the one publish it comes from (a retained copy of an earlier one cannot pass for it).
pub const REASSERTED_FIELD: &str = "reasserted";

/// What the upstream client must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Subscribe to this topic (QoS 1, without `no_local`).
    Subscribe(String),
    /// Unsubscribe from this topic.
    Unsubscribe(String),
    /// Publish this message (a re-asserted retained online status).
    Publish(OutboundMessage),
}

/// One connection of a meter: `(connectedAt, gatewayId)`, ordered by `connectedAt` (ms since the epoch), then by
/// gateway id (none first). A status without `connectedAt` (an older gateway, a cleared retained message) is the
/// oldest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConnectionKey {
    /// When the connection was identified (ms).
    pub connected_at: u64,
    /// The gateway that holds or held it.
    pub gateway_id: Option<String>,
}

/// Why a received status payload was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedStatus {
    /// Not JSON, or not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `online` missing or not a boolean.
    #[error("online is not a boolean")]
    Online,
    /// `connectedAt` neither null nor a non-negative integer.
    #[error("connectedAt is not a timestamp")]
    ConnectedAt,
    /// `gatewayId` neither null nor a string.
    #[error("gatewayId is not a string")]
    GatewayId,
}

/// A meter status as published on `{p}/meters/{id}/status` (only the fields that order connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    /// Online or not.
    pub online: bool,
    /// The connection it is about.
    pub key: ConnectionKey,
}

impl StatusView {
    /// Reads a status payload. An empty payload (a cleared retained message) reads as the offline of an unknown,
    /// oldest connection.
    pub fn parse(payload: &[u8]) -> Result<Self, MalformedStatus> {
        if payload.is_empty() {
            return Ok(StatusView { online: false, key: ConnectionKey::default() });
        }
        let value: Value = serde_json::from_slice(payload).map_err(|_| MalformedStatus::NotAnObject)?;
        let object = value.as_object().ok_or(MalformedStatus::NotAnObject)?;
        let online = object.get("online").and_then(Value::as_bool).ok_or(MalformedStatus::Online)?;
        let connected_at = match object.get("connectedAt") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or(MalformedStatus::ConnectedAt)?,
        };
        let gateway_id = match object.get("gatewayId") {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) => Some(g.clone()),
            Some(_) => return Err(MalformedStatus::GatewayId),
        };
        Ok(StatusView { online, key: ConnectionKey { connected_at, gateway_id } })
    }
}

/// The connection this gateway holds for a meter.
#[derive(Debug)]
struct Held {
    key: ConnectionKey,
    /// Its online status, as published.
    online: serde_json::Map<String, Value>,
    /// Re-assertions of it so far.
    reasserted: u64,
}

/// What this gateway knows about one meter it holds or held.
#[derive(Debug)]
struct MeterState {
    held: Option<Held>,
    /// The newest connection seen, here or elsewhere.
    newest: ConnectionKey,
    /// The connection named by the last status delivered on the meter's topic.
    last_on_topic: Option<ConnectionKey>,
    /// Own online statuses published and not delivered back yet (their exact bytes).
    unechoed: Vec<Bytes>,
    /// Echoes can no longer be told apart for this meter (more than [`MAX_UNECHOED`] outstanding, or two identical
    /// statuses sent): its offlines are always sent.
    echoes_lost: bool,
    /// Position in the forgetting order while not held.
    stamp: Option<u64>,
}

impl MeterState {
    fn new(newest: ConnectionKey) -> Self {
        MeterState { held: None, newest, last_on_topic: None, unechoed: Vec::new(), echoes_lost: false, stamp: None }
    }

    fn published_online(&mut self, payload: Bytes) {
        if self.unechoed.len() < MAX_UNECHOED && !self.unechoed.contains(&payload) {
            self.unechoed.push(payload);
        } else {
            self.echoes_lost = true;
        }
    }
}

/// The ownership state of one gateway (see the module documentation).
#[derive(Debug)]
pub struct Ownership {
    prefix: TopicPrefix,
    gateway_id: Option<String>,
    meters: HashMap<MeterId, MeterState>,
    /// Meters no longer held, oldest first (by stamp).
    forget_order: BTreeMap<u64, MeterId>,
    next_stamp: u64,
    recent_capacity: usize,
    malformed: u64,
    reasserted: u64,
}

impl Ownership {
    /// The state of a gateway publishing under `prefix` as `gateway_id` (`gateway.gateway_id`; several gateways on
    /// one broker need distinct ones).
    pub fn new(prefix: TopicPrefix, gateway_id: Option<String>) -> Self {
        Ownership {
            prefix,
            gateway_id,
            meters: HashMap::new(),
            forget_order: BTreeMap::new(),
            next_stamp: 0,
            recent_capacity: RECENT_CAPACITY,
            malformed: 0,
            reasserted: 0,
        }
    }

    /// Keeps at most `capacity` meters that are no longer held (default [`RECENT_CAPACITY`]).
    pub fn with_recent_capacity(mut self, capacity: usize) -> Self {
        self.recent_capacity = capacity;
        self
    }

    /// A status transition of a meter on this gateway (the hub's `Status` events, in order). Call it before
    /// publishing the status, and carry out the actions first: subscribing before the online status is published
    /// lets its echo come back.
    pub fn local_status(&mut self, s: &StatusChange, out: &mut Vec<Action>) {
        let key = ConnectionKey { connected_at: s.connected_at.unwrap_or(0), gateway_id: self.gateway_id.clone() };
        if s.online {
            let own = StatusChange { gateway_id: self.gateway_id.clone(), ..s.clone() };
            let online = match crate::mqtt::sink::status_payload(&own) {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            let payload = Bytes::from(serde_json::to_vec(&online).unwrap_or_default());
            let state = self.meters.entry(s.meter_id.clone()).or_insert_with(|| MeterState::new(key.clone()));
            if let Some(stamp) = state.stamp.take() {
                self.forget_order.remove(&stamp);
            }
            if state.held.is_none() {
                out.push(Action::Subscribe(self.prefix.command_request(&s.meter_id)));
                out.push(Action::Subscribe(self.prefix.status(&s.meter_id)));
            }
            state.published_online(payload);
            state.newest = state.newest.clone().max(key.clone());
            state.held = Some(Held { key, online, reasserted: 0 });
            return;
        }
        let Some(state) = self.meters.get_mut(&s.meter_id) else { return };
        let Some(held) = &state.held else { return };
        // Only the connection that holds a meter reports it offline; an older one's offline changes nothing.
        if s.connected_at.is_some() && key < held.key {
            return;
        }
        state.held = None;
        state.newest = state.newest.clone().max(key);
        out.push(Action::Unsubscribe(self.prefix.command_request(&s.meter_id)));
        out.push(Action::Unsubscribe(self.prefix.status(&s.meter_id)));
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        state.stamp = Some(stamp);
        self.forget_order.insert(stamp, s.meter_id.clone());
        while self.forget_order.len() > self.recent_capacity {
            let Some((_, oldest)) = self.forget_order.pop_first() else { break };
            self.meters.remove(&oldest);
        }
    }

    /// A publish received from the broker. Returns `true` when the topic is a meter status topic (handled here,
    /// malformed or not); `false` for anything else (e.g. a command request, for the command router).
    pub fn remote_publish(&mut self, topic: &str, payload: &[u8], out: &mut Vec<Action>) -> bool {
        let Some(raw_id) = self.prefix.parse_status(topic) else { return false };
        let Ok(meter_id) = MeterId::new(raw_id) else {
            self.malformed += 1;
            return true;
        };
        let status = match StatusView::parse(payload) {
            Ok(status) => status,
            Err(_) => {
                self.malformed += 1;
                return true;
            }
        };
        let Some(state) = self.meters.get_mut(&meter_id) else { return true };
        if let Some(at) = state.unechoed.iter().position(|p| p.as_ref() == payload) {
            state.unechoed.remove(at);
        }
        state.newest = state.newest.clone().max(status.key.clone());
        state.last_on_topic = Some(status.key.clone());
        let Some(held) = state.held.as_mut() else { return true };
        if status.key < held.key && held.key >= state.newest {
            held.reasserted += 1;
            let mut online = held.online.clone();
            online.insert(REASSERTED_FIELD.into(), Value::from(held.reasserted));
            let payload = Bytes::from(serde_json::to_vec(&online).unwrap_or_default());
            out.push(Action::Publish(OutboundMessage {
                topic: self.prefix.status(&meter_id),
                payload: payload.clone(),
                qos: Qos::AtLeastOnce,
                retain: true,
            }));
            state.published_online(payload);
            self.reasserted += 1;
        }
        true
    }

    /// Every CONNACK. Without a session the broker forgot our subscriptions: every held meter is subscribed again.
    pub fn connected(&mut self, session_present: bool, out: &mut Vec<Action>) {
        if session_present {
            return;
        }
        let mut held: Vec<&MeterId> = self.meters.iter().filter(|(_, s)| s.held.is_some()).map(|(id, _)| id).collect();
        held.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for meter_id in held {
            out.push(Action::Subscribe(self.prefix.command_request(meter_id)));
            out.push(Action::Subscribe(self.prefix.status(meter_id)));
        }
    }

    /// Whether a message about to be sent upstream should go: `false` only for a superseded offline status (see the
    /// module documentation). Anything else, including what this state cannot read, is sent.
    pub fn should_send(&self, topic: &str, payload: &[u8]) -> bool {
        let Some(meter_id) = self.prefix.parse_status(topic).and_then(|id| MeterId::new(id).ok()) else { return true };
        let Ok(status) = StatusView::parse(payload) else { return true };
        if status.online {
            return true;
        }
        let Some(state) = self.meters.get(&meter_id) else { return true };
        let superseded = state.unechoed.is_empty()
            && !state.echoes_lost
            && state.last_on_topic.as_ref().is_some_and(|last| *last > status.key);
        !superseded
    }

    /// Status payloads received that could not be read (ignored).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Online statuses re-published because an older connection's status had overwritten them.
    pub fn reasserted(&self) -> u64 {
        self.reasserted
    }

    /// Meters this gateway holds.
    pub fn held(&self) -> usize {
        self.meters.values().filter(|s| s.held.is_some()).count()
    }

    /// Meters with state (held, or held recently).
    pub fn tracked(&self) -> usize {
        self.meters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;
    use proptest::prelude::*;
    use std::collections::{HashSet, VecDeque};

    const METER: &str = "000000001234";
    const STATUS: &str = "ivy/v1/meters/000000001234/status";
    const COMMANDS: &str = "ivy/v1/meters/000000001234/command/request";

    fn gateway(id: &str) -> Ownership {
        Ownership::new(TopicPrefix::new("ivy/v1", Some(id)).unwrap(), Some(id.to_owned()))
    }

    fn status(meter: &str, online: bool, connected_at: u64) -> StatusChange {
        StatusChange {
            meter_id: MeterId::new(meter).unwrap(),
            online,
            ip: online.then(|| "10.0.0.1".into()),
            protocol: Some(Source::Dlt645),
            connected_at: Some(connected_at),
            gateway_id: None,
            reason: (!online).then(|| "connection_closed".into()),
            ts: connected_at + 1,
        }
    }

    /// The payload gateway `gw` publishes for `s` (what the MQTT sink builds).
    fn payload(gw: &str, s: &StatusChange) -> Vec<u8> {
        let s = StatusChange { gateway_id: Some(gw.into()), ..s.clone() };
        serde_json::to_vec(&crate::mqtt::sink::status_payload(&s)).unwrap()
    }

    fn online(gw: &mut Ownership, at: u64) -> Vec<Action> {
        let mut out = Vec::new();
        gw.local_status(&status(METER, true, at), &mut out);
        out
    }

    fn offline(gw: &mut Ownership, at: u64) -> Vec<Action> {
        let mut out = Vec::new();
        gw.local_status(&status(METER, false, at), &mut out);
        out
    }

    fn receive(gw: &mut Ownership, from: &str, online: bool, at: u64) -> Vec<Action> {
        let mut out = Vec::new();
        assert!(gw.remote_publish(STATUS, &payload(from, &status(METER, online, at)), &mut out));
        out
    }

    fn reasserts(actions: &[Action]) -> Vec<serde_json::Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(m) => {
                    assert_eq!((m.topic.as_str(), m.qos, m.retain), (STATUS, Qos::AtLeastOnce, true));
                    Some(serde_json::from_slice(&m.payload).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn offline_payload(gw: &str, at: u64) -> Vec<u8> {
        payload(gw, &status(METER, false, at))
    }

    #[test]
    fn online_subscribes_offline_unsubscribes() {
        let mut a = gateway("gw-a");
        let subscribe = vec![Action::Subscribe(COMMANDS.into()), Action::Subscribe(STATUS.into())];
        assert_eq!(online(&mut a, 100), subscribe);
        assert_eq!(a.held(), 1);
        // A later connection of the same meter here (a reconnect) holds on without subscribing again.
        assert_eq!(online(&mut a, 200), vec![]);
        // The offline of a connection older than the held one changes nothing.
        assert_eq!(offline(&mut a, 100), vec![]);
        assert_eq!(
            offline(&mut a, 200),
            vec![Action::Unsubscribe(COMMANDS.into()), Action::Unsubscribe(STATUS.into())]
        );
        assert_eq!(a.held(), 0);
        assert_eq!(offline(&mut a, 200), vec![], "not held: nothing to unsubscribe");
    }

    #[test]
    fn a_late_offline_of_a_after_b_online_is_answered_by_b() {
        let mut b = gateway("gw-b");
        online(&mut b, 200);
        assert!(receive(&mut b, "gw-b", true, 200).is_empty(), "own echo");
        // A's offline (connection 100) reaches the broker after B's online and overwrites the retained status.
        let actions = receive(&mut b, "gw-a", false, 100);
        let published = reasserts(&actions);
        assert_eq!(published.len(), 1);
        assert_eq!(published[0]["online"], true);
        assert_eq!(published[0]["gatewayId"], "gw-b");
        assert_eq!(published[0]["connectedAt"], 200);
        assert_eq!(b.reasserted(), 1);
        // The re-assertion's echo ends it.
        assert!(receive(&mut b, "gw-b", true, 200).is_empty());
    }

    #[test]
    fn a_suppresses_its_offline_once_b_online_came_after_its_own_echo() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        receive(&mut a, "gw-a", true, 100);
        assert!(receive(&mut a, "gw-b", true, 200).is_empty(), "a newer connection: no reaction");
        offline(&mut a, 100);
        assert!(!a.should_send(STATUS, &offline_payload("gw-a", 100)), "B's newer online would be overwritten");
        assert!(a.should_send(STATUS, &payload("gw-a", &status(METER, true, 300))), "onlines always go");
        assert!(a.should_send("ivy/v1/meters/000000001234/telemetry", b"{}"), "not a status");
    }

    #[test]
    fn a_sends_its_offline_while_its_own_online_may_still_land_late() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        // B's online is seen before A's own online came back: A's online may be applied after B's.
        receive(&mut a, "gw-b", true, 200);
        offline(&mut a, 100);
        assert!(a.should_send(STATUS, &offline_payload("gw-a", 100)));
        // Once the echo arrives after B's status, A's online was the last word: its offline must go.
        receive(&mut a, "gw-a", true, 100);
        assert!(a.should_send(STATUS, &offline_payload("gw-a", 100)));
    }

    #[test]
    fn a_offline_sent_before_b_online_needs_nothing() {
        let mut a = gateway("gw-a");
        let mut b = gateway("gw-b");
        online(&mut a, 100);
        receive(&mut a, "gw-a", true, 100);
        offline(&mut a, 100);
        assert!(a.should_send(STATUS, &offline_payload("gw-a", 100)), "nothing newer seen");
        // B subscribes and gets A's retained offline before its own online lands: it re-asserts (harmless).
        online(&mut b, 200);
        assert_eq!(reasserts(&receive(&mut b, "gw-a", false, 100)).len(), 1);
        // Then its own online and the re-assertion come back: nothing more.
        assert!(receive(&mut b, "gw-b", true, 200).is_empty());
        assert!(receive(&mut b, "gw-b", true, 200).is_empty());
    }

    #[test]
    fn equal_connected_at_is_ordered_by_gateway_id() {
        let mut a = gateway("gw-a");
        let mut b = gateway("gw-b");
        online(&mut a, 100);
        online(&mut b, 100);
        assert!(receive(&mut a, "gw-b", true, 100).is_empty(), "(100, gw-b) is newer than (100, gw-a)");
        assert_eq!(reasserts(&receive(&mut b, "gw-a", true, 100)).len(), 1, "B answers A's older connection");
    }

    #[test]
    fn own_echo_and_newer_connections_cause_nothing() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        assert!(receive(&mut a, "gw-a", true, 100).is_empty());
        assert!(receive(&mut a, "gw-b", true, 200).is_empty());
        assert!(receive(&mut a, "gw-b", false, 200).is_empty());
        assert_eq!(a.reasserted(), 0);
    }

    #[test]
    fn a_stale_socket_still_held_does_not_claim_the_meter() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        // B had the newest connection (200) and it ended: the meter is offline, A's socket is stale.
        receive(&mut a, "gw-b", true, 200);
        receive(&mut a, "gw-b", false, 200);
        // Even an older status arriving now does not make A re-assert: it knows a newer connection existed.
        assert!(receive(&mut a, "gw-c", false, 50).is_empty());
        assert!(receive(&mut a, "gw-b", true, 200).is_empty());
        assert_eq!(a.reasserted(), 0);
    }

    #[test]
    fn a_cleared_or_old_format_status_is_older_than_any_connection() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        let mut out = Vec::new();
        assert!(a.remote_publish(STATUS, b"", &mut out));
        assert_eq!(reasserts(&out).len(), 1, "an empty retained message cleared the status");
        out.clear();
        a.remote_publish(STATUS, br#"{"ts":1,"meterId":"000000001234","online":false,"reason":"x"}"#, &mut out);
        assert_eq!(reasserts(&out).len(), 1, "no connectedAt: the oldest connection");
    }

    #[test]
    fn connack_without_session_subscribes_everything_held_again() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        let mut out = Vec::new();
        a.local_status(&status("000000005678", true, 100), &mut out);
        a.local_status(&status("000000009999", true, 100), &mut out);
        a.local_status(&status("000000009999", false, 100), &mut out);
        out.clear();
        a.connected(true, &mut out);
        assert!(out.is_empty(), "the session kept the subscriptions");
        a.connected(false, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Subscribe(COMMANDS.into()),
                Action::Subscribe(STATUS.into()),
                Action::Subscribe("ivy/v1/meters/000000005678/command/request".into()),
                Action::Subscribe("ivy/v1/meters/000000005678/status".into()),
            ]
        );
    }

    #[test]
    fn malformed_payloads_are_counted_and_ignored() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        let mut out = Vec::new();
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            br#"{"online":"yes"}"#,
            br#"{"online":false,"connectedAt":-5}"#,
            br#"{"online":false,"connectedAt":"now"}"#,
            br#"{"online":false,"gatewayId":7}"#,
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(a.remote_publish(STATUS, bad, &mut out), "a status topic is handled");
            assert!(a.should_send(STATUS, bad), "what cannot be read is not suppressed");
        }
        assert!(a.remote_publish("ivy/v1/meters/bad id/status", b"{}", &mut out));
        assert_eq!(a.malformed(), 9);
        assert!(out.is_empty());
        assert!(!a.remote_publish(COMMANDS, b"{}", &mut out), "command requests are not ours");
        assert!(!a.remote_publish("elsewhere/meters/x/status", b"{}", &mut out));
        // Meters never held here are ignored.
        assert!(a.remote_publish("ivy/v1/meters/000000000001/status", b"", &mut out));
        assert!(out.is_empty());
        assert_eq!(a.tracked(), 1);
    }

    #[test]
    fn memory_is_bounded_to_held_meters_and_the_recent_ones() {
        let mut a = gateway("gw-a").with_recent_capacity(10);
        let mut out = Vec::new();
        for n in 0..1000u64 {
            let meter = format!("{n:012}");
            a.local_status(&status(&meter, true, n), &mut out);
            if n % 2 == 0 {
                a.local_status(&status(&meter, false, n), &mut out);
            }
        }
        assert_eq!(a.held(), 500);
        assert_eq!(a.tracked(), 510);
    }

    #[test]
    fn the_reasserted_payload_is_the_online_status_with_gateway_id_and_a_count() {
        let mut b = gateway("gw-b");
        online(&mut b, 200);
        let mut expected: serde_json::Value =
            serde_json::from_slice(&payload("gw-b", &status(METER, true, 200))).unwrap();
        for n in 1..=2 {
            let published = reasserts(&receive(&mut b, "gw-a", true, 100));
            expected[REASSERTED_FIELD] = n.into();
            assert_eq!(published, vec![expected.clone()]);
        }
    }

    /// A retained copy of an earlier status (delivered again on a new subscription) is not the echo of a later,
    /// still unconfirmed re-assertion: the offline is sent while that one may still land.
    #[test]
    fn a_retained_copy_of_the_first_online_does_not_confirm_a_later_reassertion() {
        let mut a = gateway("gw-a");
        online(&mut a, 100);
        let first = payload("gw-a", &status(METER, true, 100));
        let mut out = Vec::new();
        a.remote_publish(STATUS, &first, &mut out);
        // Something older makes A re-assert; the re-assertion is not back yet.
        assert_eq!(reasserts(&receive(&mut a, "gw-c", false, 50)).len(), 1);
        // A re-subscription delivers the retained first online again, then B's newer status comes.
        a.remote_publish(STATUS, &first, &mut out);
        receive(&mut a, "gw-b", true, 200);
        offline(&mut a, 100);
        assert!(a.should_send(STATUS, &offline_payload("gw-a", 100)), "the re-assertion may land after B's status");
    }

    // A model of two gateways and one broker: per-client FIFO queues both ways, a retained message per topic,
    // subscriptions applied in broker order, retained delivery on subscribe, sessions that can be lost.

    #[derive(Debug, Clone)]
    enum Op {
        /// The meter connects to gateway `gw`, `dt` ms after the previous connection (0: the same millisecond).
        Connect { gw: usize, dt: u64 },
        /// Gateway `gw`'s connection of the meter closes, unless it is the newest one.
        CloseStale { gw: usize },
        /// Gateway `gw` sends its next queued message to the broker.
        Transmit { gw: usize },
        /// Gateway `gw` takes its next delivered message.
        Deliver { gw: usize },
        /// Gateway `gw` reconnects to the broker.
        Reconnect { gw: usize, session_present: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..2usize, 0..3u64).prop_map(|(gw, dt)| Op::Connect { gw, dt }),
            2 => (0..2usize).prop_map(|gw| Op::CloseStale { gw }),
            6 => (0..2usize).prop_map(|gw| Op::Transmit { gw }),
            6 => (0..2usize).prop_map(|gw| Op::Deliver { gw }),
            1 => (0..2usize, any::<bool>()).prop_map(|(gw, session_present)| Op::Reconnect { gw, session_present }),
        ]
    }

    struct SimGateway {
        name: String,
        ownership: Ownership,
        /// The meter's connection here (`connectedAt`).
        conn: Option<u64>,
        outgoing: VecDeque<Action>,
        incoming: VecDeque<(String, Bytes)>,
        /// Held by the broker.
        subscriptions: HashSet<String>,
    }

    struct World {
        gws: Vec<SimGateway>,
        retained: HashMap<String, Bytes>,
        clock: u64,
        /// The actions first (subscribe before the status is published), or the status first.
        actions_first: bool,
    }

    impl World {
        fn new(actions_first: bool) -> Self {
            let gw = |name: &str| SimGateway {
                name: name.into(),
                ownership: gateway(name),
                conn: None,
                outgoing: VecDeque::new(),
                incoming: VecDeque::new(),
                subscriptions: HashSet::new(),
            };
            World { gws: vec![gw("gw-a"), gw("gw-b")], retained: HashMap::new(), clock: 1000, actions_first }
        }

        fn newest(&self) -> Option<ConnectionKey> {
            self.gws
                .iter()
                .filter_map(|g| g.conn.map(|c| ConnectionKey { connected_at: c, gateway_id: Some(g.name.clone()) }))
                .max()
        }

        fn local(&mut self, gw: usize, s: StatusChange) {
            let g = &mut self.gws[gw];
            let mut actions = Vec::new();
            g.ownership.local_status(&s, &mut actions);
            let message = Action::Publish(OutboundMessage {
                topic: STATUS.into(),
                payload: Bytes::from(payload(&g.name, &s)),
                qos: Qos::AtLeastOnce,
                retain: true,
            });
            if self.actions_first {
                g.outgoing.extend(actions);
                g.outgoing.push_back(message);
            } else {
                g.outgoing.push_back(message);
                g.outgoing.extend(actions);
            }
        }

        fn apply(&mut self, op: Op) {
            match op {
                Op::Connect { gw, dt } => {
                    self.clock += dt;
                    self.gws[gw].conn = Some(self.clock);
                    // A reconnect on the same gateway publishes the new connection too (with a gateway id set).
                    self.local(gw, status(METER, true, self.clock));
                }
                Op::CloseStale { gw } => {
                    let Some(c) = self.gws[gw].conn else { return };
                    let key = ConnectionKey { connected_at: c, gateway_id: Some(self.gws[gw].name.clone()) };
                    if Some(key) == self.newest() {
                        return;
                    }
                    self.close(gw);
                }
                Op::Transmit { gw } => self.transmit(gw),
                Op::Deliver { gw } => {
                    let g = &mut self.gws[gw];
                    if let Some((topic, payload)) = g.incoming.pop_front() {
                        let mut actions = Vec::new();
                        assert!(g.ownership.remote_publish(&topic, &payload, &mut actions));
                        g.outgoing.extend(actions);
                    }
                }
                Op::Reconnect { gw, session_present } => {
                    let g = &mut self.gws[gw];
                    if !session_present {
                        g.subscriptions.clear();
                        g.incoming.clear();
                    }
                    let mut actions = Vec::new();
                    g.ownership.connected(session_present, &mut actions);
                    g.outgoing.extend(actions);
                }
            }
        }

        fn close(&mut self, gw: usize) {
            if let Some(c) = self.gws[gw].conn.take() {
                self.local(gw, status(METER, false, c));
            }
        }

        fn transmit(&mut self, gw: usize) {
            let Some(action) = self.gws[gw].outgoing.pop_front() else { return };
            match action {
                Action::Subscribe(topic) => {
                    if let Some(p) = self.retained.get(&topic) {
                        self.gws[gw].incoming.push_back((topic.clone(), p.clone()));
                    }
                    self.gws[gw].subscriptions.insert(topic);
                }
                Action::Unsubscribe(topic) => {
                    self.gws[gw].subscriptions.remove(&topic);
                }
                Action::Publish(m) => {
                    // The outbox asks just before sending.
                    if !self.gws[gw].ownership.should_send(&m.topic, &m.payload) {
                        return;
                    }
                    self.retained.insert(m.topic.clone(), m.payload.clone());
                    for g in &mut self.gws {
                        if g.subscriptions.contains(&m.topic) {
                            g.incoming.push_back((m.topic.clone(), m.payload.clone()));
                        }
                    }
                }
            }
        }

        /// Runs every queue dry; panics if that takes unreasonably long (two gateways answering each other).
        fn settle(&mut self) {
            for _ in 0..10_000 {
                if self.gws.iter().all(|g| g.outgoing.is_empty() && g.incoming.is_empty()) {
                    return;
                }
                for gw in 0..self.gws.len() {
                    self.transmit(gw);
                    self.apply(Op::Deliver { gw });
                }
            }
            panic!("the gateways never settle");
        }

        fn retained_status(&self) -> serde_json::Value {
            serde_json::from_slice(&self.retained[STATUS]).unwrap()
        }
    }

    /// The ops that may follow once the meter is leaving: no new connection, any connection may close.
    fn leaving_op() -> impl Strategy<Value = Option<Op>> {
        prop_oneof![
            1 => (0..2usize).prop_map(|_| None),
            4 => op().prop_filter_map("no new connection", |op| match op {
                Op::Connect { .. } => None,
                other => Some(Some(other)),
            }),
        ]
    }

    fn run(world: &mut World, first: usize, ops: Vec<Op>) {
        world.apply(Op::Connect { gw: first, dt: 0 });
        for op in ops {
            world.apply(op);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn the_retained_status_ends_online_at_the_newest_connection(
            first in 0..2usize,
            ops in proptest::collection::vec(op(), 0..60),
            actions_first in any::<bool>(),
        ) {
            let mut world = World::new(actions_first);
            run(&mut world, first, ops);
            world.settle();
            let newest = world.newest().unwrap();
            let retained = world.retained_status();
            prop_assert_eq!(&retained["online"], true, "{}", retained);
            prop_assert_eq!(retained["gatewayId"].as_str(), newest.gateway_id.as_deref(), "{}", retained);
            prop_assert_eq!(retained["connectedAt"].as_u64(), Some(newest.connected_at), "{}", retained);
        }

        /// Every connection ends, at random points of the exchange (`None` closes the next gateway's connection,
        /// the newest included): the meter ends offline.
        #[test]
        fn the_retained_status_ends_offline_when_every_connection_closed(
            first in 0..2usize,
            ops in proptest::collection::vec(op(), 0..60),
            leaving in proptest::collection::vec(leaving_op(), 0..40),
            actions_first in any::<bool>(),
        ) {
            let mut world = World::new(actions_first);
            run(&mut world, first, ops);
            let mut next = first;
            for op in leaving {
                match op {
                    Some(op) => world.apply(op),
                    None => {
                        world.close(next);
                        next = 1 - next;
                    }
                }
            }
            world.close(0);
            world.close(1);
            world.settle();
            let retained = world.retained_status();
            prop_assert_eq!(&retained["online"], false, "{}", retained);
        }
    }
}
