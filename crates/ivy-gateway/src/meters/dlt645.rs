//! DL/T 645 driver (being written).
use super::conn::{Conn, EndReason, ReadOutcome};
/// Runs the DL/T 645 conversation.
pub async fn run(conn: &mut Conn, _leftover: Vec<u8>) -> EndReason {
    loop {
        if let ReadOutcome::End(r) = conn.read().await {
            return r;
        }
    }
}
