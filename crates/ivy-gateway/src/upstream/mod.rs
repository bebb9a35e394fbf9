//! Delivery to an external MQTT broker or cluster (SPEC 4.1, upstream mode), shared by several gateways:
//! [`ownership`] decides, without any IO, which meter topics this gateway subscribes to and when it re-publishes a
//! meter's retained status so that it ends at the gateway holding the meter's newest connection; [`client`] is the
//! MQTT client that carries it out and delivers the durable outbox (QoS 1, deleted after PUBACK).

pub mod client;
pub mod link;
pub mod ownership;
