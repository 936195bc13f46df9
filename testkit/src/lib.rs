//! What tidemark's tests share, so no test includes another's files:
//!
//! - [`moto`]: a real S3 API server (moto) on a free loopback port.
//! - [`tansu`]: a Kafka-protocol broker (tansu), with kill, restart, pause.
//! - [`kinesalite`]: a Kinesis API server (kinesalite on node).
//! - [`launch`]: what those launchers share (tool paths, ports, credentials).
//! - [`cut_proxy`]: a TCP proxy that cuts a connection mid-response.
//!
//! Test servers never skip: a missing server fails the test with the
//! command that installs it. (Moving here next: the cluster launcher,
//! datasets, the independent reference and the committed-output reader,
//! which still live under `tests/`.)

pub mod cut_proxy;
pub mod kinesalite;
pub mod launch;
pub mod moto;
pub mod tansu;
