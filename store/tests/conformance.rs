//! The one conformance suite (`tidemark_store::conformance`) against every
//! backend: local disk, memory, and S3 through a real S3 API server (moto,
//! started on loopback; without it this test fails, it never skips).

use std::sync::Arc;
use tidemark_store::{conformance, LocalStorage, MemoryStorage, TempDir};
use tidemark_testkit::moto;

#[test]
fn local_disk_keeps_the_contract() {
    let dir = TempDir::new("conformance");
    conformance::run(Arc::new(LocalStorage::new(&dir.0).unwrap()));
}

#[test]
fn memory_keeps_the_contract() {
    conformance::run(Arc::new(MemoryStorage::new()));
}

#[test]
fn s3_keeps_the_contract() {
    let server = moto::shared();
    let st = moto::bucket(&server.endpoint, "s3://conformance/root/");
    conformance::run(Arc::new(st));
}
