//! DL/T 645-2007 (placeholder until the module lands).
