//! Commands from MQTT and HTTP: parse and validate ([`request`]), route to the session that holds the meter, and
//! shape the response.

pub(crate) mod reply;
pub(crate) mod request;
pub(crate) mod router;
