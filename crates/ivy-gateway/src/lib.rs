//! The IVY gateway service (placeholder).
