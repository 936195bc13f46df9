//! Helpers the integration tests share (not a test binary of its own).

pub mod kafka;
