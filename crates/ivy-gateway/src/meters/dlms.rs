//! DLMS driver (being written).
use super::conn::{Conn, EndReason, ReadOutcome};
/// Runs the DLMS conversation.
pub async fn run(conn: &mut Conn, _leftover: Vec<u8>, _raw: bool) -> EndReason {
    loop {
        if let ReadOutcome::End(r) = conn.read().await {
            return r;
        }
    }
}
