//! The one lock-poison policy of the gateway.
//!
//! Every `std::sync::Mutex` in the gateway guards bookkeeping (maps, counters, the alarm engine's tables) whose
//! updates are single inserts, removes or field writes: a panic while holding one cannot leave the data
//! half-updated in a way later readers could trip over. So a poisoned lock is used as it is, never turned into an
//! error or a skipped update: skipping would silently lose admissions, registrations or acknowledgements.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, using the data even if a previous holder panicked (see the module docs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
