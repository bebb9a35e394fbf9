//! Meter simulator (placeholder until the simulator lands).
