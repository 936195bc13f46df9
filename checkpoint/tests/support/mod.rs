//! Helpers shared by the integration tests (not every test binary uses all).
#![allow(dead_code)]

pub mod cut_proxy;
pub mod moto;
