//! The one conformance suite (`tidemark_store::conformance`) against every
//! backend: local disk, memory, and S3 through a real S3 API server (moto,
//! started on loopback; without it this test fails, it never skips).

use std::sync::Arc;
use tidemark_store::{conformance, LocalStorage, MemoryStorage, S3Options, S3Storage, TempDir};
use tidemark_testkit::launch::dummy_aws_credentials;
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
    dummy_aws_credentials();
    let server = moto::shared();
    let opts = S3Options {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: Some(true),
    };
    let st = S3Storage::new("s3://conformance/root/", &opts).unwrap();
    st.create_bucket().unwrap();
    conformance::run(Arc::new(st));
}
