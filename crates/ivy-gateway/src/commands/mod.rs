//! Commands from MQTT and HTTP: parse and validate ([`request`]), route to the session that holds the meter, and
//! shape the response.

pub mod reply;
pub mod request;
pub mod router;
