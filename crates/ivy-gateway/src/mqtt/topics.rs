//! Topic names (SPEC 4.2) and the access rules of the roles (SPEC 4.3).

use crate::auth::Role;
use crate::config::valid_topic_prefix;
use ivy_protocol::registration::MeterId;

/// The validated topic prefix (default `ivy/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPrefix {
    prefix: String,
    gateway_id: Option<String>,
}

/// Why a prefix is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic prefix '{0}' must be non-empty, without wildcards, NUL or empty levels")]
pub struct PrefixError(pub String);

/// Gateway-owned leaf topics under `{p}/meters/{id}/`.
const METER_OWNED: [&str; 5] = ["telemetry", "snapshot", "status", "events", "command/response"];

impl TopicPrefix {
    /// Validates `prefix`; `gateway_id` moves gateway topics to `{p}/gateways/{id}/...`.
    pub fn new(prefix: &str, gateway_id: Option<&str>) -> Result<Self, PrefixError> {
        if !valid_topic_prefix(prefix) {
            return Err(PrefixError(prefix.to_owned()));
        }
        Ok(TopicPrefix { prefix: prefix.to_owned(), gateway_id: gateway_id.map(str::to_owned) })
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    fn meter(&self, id: &MeterId, leaf: &str) -> String {
        // MeterId admits only [A-Za-z0-9_-]: it cannot add levels or wildcards.
        format!("{}/meters/{}/{leaf}", self.prefix, id)
    }

    /// `{p}/meters/{id}/telemetry`.
    pub fn telemetry(&self, id: &MeterId) -> String {
        self.meter(id, "telemetry")
    }
    /// `{p}/meters/{id}/snapshot`.
    pub fn snapshot(&self, id: &MeterId) -> String {
        self.meter(id, "snapshot")
    }
    /// `{p}/meters/{id}/status`.
    pub fn status(&self, id: &MeterId) -> String {
        self.meter(id, "status")
    }
    /// `{p}/meters/{id}/events`.
    pub fn events(&self, id: &MeterId) -> String {
        self.meter(id, "events")
    }
    /// `{p}/meters/{id}/command/request`.
    pub fn command_request(&self, id: &MeterId) -> String {
        self.meter(id, "command/request")
    }
    /// `{p}/meters/{id}/command/response`.
    pub fn command_response(&self, id: &MeterId) -> String {
        self.meter(id, "command/response")
    }
    /// The subscription filter for every command request.
    pub fn command_request_filter(&self) -> String {
        format!("{}/meters/+/command/request", self.prefix)
    }
    /// `{p}/gateway/status` or `{p}/gateways/{gateway_id}/status`.
    pub fn gateway_status(&self) -> String {
        self.gateway("status")
    }
    /// `{p}/gateway/stats` or `{p}/gateways/{gateway_id}/stats`.
    pub fn gateway_stats(&self) -> String {
        self.gateway("stats")
    }

    fn gateway(&self, leaf: &str) -> String {
        match &self.gateway_id {
            Some(g) => format!("{}/gateways/{g}/{leaf}", self.prefix),
            None => format!("{}/gateway/{leaf}", self.prefix),
        }
    }

    /// The meter id of a `{p}/meters/{id}/command/request` topic (the id is not validated here).
    pub fn parse_command_request<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.parse_meter_topic(topic, "/command/request")
    }

    /// The meter id of a `{p}/meters/{id}/status` topic (the id is not validated here).
    pub fn parse_status<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.parse_meter_topic(topic, "/status")
    }

    /// The `{id}` of `{p}/meters/{id}{leaf}`: one non-empty level.
    fn parse_meter_topic<'a>(&self, topic: &'a str, leaf: &str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/meters/")?;
        let id = rest.strip_suffix(leaf)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    /// Whether `topic` is one only the gateway publishes: per-meter telemetry, snapshot, status, events and
    /// command responses, and the gateway's own topics.
    pub fn is_gateway_owned(&self, topic: &str) -> bool {
        let Some(rest) = topic.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')) else { return false };
        if rest.starts_with("gateway/") || rest.starts_with("gateways/") {
            return true;
        }
        match rest.strip_prefix("meters/").and_then(|r| r.split_once('/')) {
            Some((_, leaf)) => METER_OWNED.contains(&leaf),
            None => false,
        }
    }

    /// Whether `filter` stays inside the prefix (`{p}/#`, `{p}/meters/+/telemetry`, ...): its leading levels equal
    /// the prefix's, literally (a wildcard there would reach other trees).
    pub fn contains_filter(&self, filter: &str) -> bool {
        let mut f = filter.split('/');
        for level in self.prefix.split('/') {
            if f.next() != Some(level) {
                return false;
            }
        }
        // `{p}` alone or `{p}/...`.
        true
    }

    /// May a client with `role` subscribe to `filter`?
    pub fn may_subscribe(&self, role: Role, filter: &str) -> bool {
        match role {
            Role::Admin => true,
            Role::Operator | Role::Viewer => self.contains_filter(filter),
        }
    }

    /// May a client with `role` publish to `topic`? Nobody but the gateway publishes its own topics; operators
    /// publish command requests only; viewers publish nothing.
    pub fn may_publish(&self, role: Role, topic: &str) -> bool {
        if self.is_gateway_owned(topic) || topic.contains(['+', '#']) {
            return false;
        }
        match role {
            Role::Admin => true,
            Role::Operator => self.parse_command_request(topic).is_some(),
            Role::Viewer => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> TopicPrefix {
        TopicPrefix::new("ivy/v1", None).unwrap()
    }

    #[test]
    fn topics() {
        let id = MeterId::new("311501114070").unwrap();
        assert_eq!(p().telemetry(&id), "ivy/v1/meters/311501114070/telemetry");
        assert_eq!(p().gateway_status(), "ivy/v1/gateway/status");
        assert_eq!(TopicPrefix::new("ivy/v1", Some("gw1")).unwrap().gateway_stats(), "ivy/v1/gateways/gw1/stats");
        assert_eq!(p().parse_command_request("ivy/v1/meters/m1/command/request"), Some("m1"));
        assert_eq!(p().parse_command_request("ivy/v1/meters/a/b/command/request"), None);
        assert_eq!(p().parse_status("ivy/v1/meters/m1/status"), Some("m1"));
        assert_eq!(p().parse_status("ivy/v1/meters//status"), None);
        assert_eq!(p().parse_status("ivy/v1/meters/m1/command/request"), None);
        assert_eq!(p().parse_status("other/meters/m1/status"), None);
        assert!(TopicPrefix::new("a/+/b", None).is_err());
        assert!(TopicPrefix::new("a//b", None).is_err());
    }

    #[test]
    fn acl() {
        let p = p();
        assert!(p.may_subscribe(Role::Viewer, "ivy/v1/#"));
        assert!(p.may_subscribe(Role::Viewer, "ivy/v1/meters/+/telemetry"));
        assert!(!p.may_subscribe(Role::Viewer, "#"));
        assert!(!p.may_subscribe(Role::Viewer, "ivy/+/meters/#"));
        assert!(!p.may_subscribe(Role::Operator, "other/#"));
        assert!(p.may_subscribe(Role::Admin, "#"));
        assert!(!p.may_publish(Role::Viewer, "ivy/v1/meters/m1/command/request"));
        assert!(p.may_publish(Role::Operator, "ivy/v1/meters/m1/command/request"));
        assert!(!p.may_publish(Role::Operator, "ivy/v1/meters/m1/telemetry"));
        assert!(!p.may_publish(Role::Admin, "ivy/v1/meters/m1/telemetry"));
        assert!(!p.may_publish(Role::Admin, "ivy/v1/meters/m1/command/response"));
        assert!(!p.may_publish(Role::Admin, "ivy/v1/gateway/status"));
        assert!(p.may_publish(Role::Admin, "ivy/v1/meters/m1/command/request"));
        assert!(p.may_publish(Role::Admin, "somewhere/else"));
    }
}
