//! `S3Storage` against a real S3 API server (moto), through the `Storage`
//! trait, beyond the contract every backend keeps (`store::conformance`,
//! run against S3 in `store/tests/conformance.rs`): the root prefix, large objects
//! (multipart, conditional multipart, streaming reads), errors, and the
//! manifest helpers running over S3.
//!
//! Needs `pip install 'moto[server]'`; without it these tests fail (they do
//! not skip).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tidemark_checkpoint::commit_log;
use tidemark_checkpoint::manifest::{
    self, collect_garbage, file_name, sha256_hex, verify, FileEntry, JobSection, Manifest,
    StateFile,
};
use tidemark_checkpoint::s3::{S3Options, S3Storage};
use tidemark_checkpoint::storage::{self, Storage};
use tidemark_testkit::cut_proxy::CutProxy;
use tidemark_testkit::launch::dummy_aws_credentials;
use tidemark_testkit::moto;

/// The shared moto server, with dummy credentials set before any client
/// exists (every test calls `setup` first).
fn setup() -> &'static moto::Moto {
    dummy_aws_credentials();
    moto::shared()
}

fn opts() -> S3Options {
    S3Options {
        endpoint: Some(setup().endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: None, // on by default with an endpoint override
    }
}

/// A fresh bucket name per test.
fn bucket(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "tm-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A store on a new bucket (created), under `prefix` ("" for the root).
fn store(tag: &str, prefix: &str) -> S3Storage {
    let b = bucket(tag);
    let st = S3Storage::new(&format!("s3://{b}/{prefix}"), &opts()).unwrap();
    st.create_bucket().unwrap();
    st
}

/// Deterministic pseudo-random bytes (xorshift), so a misplaced part shows.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

const MIB: usize = 1 << 20;

/// Multipart uploads still open in the store's bucket (aborted or completed
/// ones are gone).
fn open_uploads(st: &S3Storage) -> usize {
    let rt = tokio_rt();
    let out = rt
        .block_on(
            st.client()
                .list_multipart_uploads()
                .bucket(st.bucket())
                .send(),
        )
        .unwrap();
    out.uploads().len()
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn list_filters_sorts_and_respects_the_root_prefix() {
    let b = bucket("list");
    let whole = S3Storage::new(&format!("s3://{b}"), &opts()).unwrap();
    whole.create_bucket().unwrap();
    let run = S3Storage::new(&format!("s3://{b}/jobs/run1/"), &opts()).unwrap();
    assert_eq!(run.describe(), format!("s3://{b}/jobs/run1"));
    let keys = [
        "transactions/date=2023-11-14/hour=22/e1.parquet",
        "transactions/date=2023-11-14/hour=03/e2.parquet",
        "transactions/date=2023-11-15/hour=00/e3.parquet",
        "manifests/00000000000000000002.json",
        "manifests/00000000000000000001.json",
        "rejects/x.parquet",
        "top",
    ];
    for k in keys {
        run.put(k, k.as_bytes()).unwrap();
    }
    // Neighbours that the root prefix must hide.
    whole.put("jobs/run10/manifests/x.json", b"x").unwrap();
    whole.put("jobs/other", b"x").unwrap();
    whole.put("elsewhere/manifests/1.json", b"x").unwrap();
    // Objects this store never writes and cannot address: a temporary name and
    // a console-style folder marker.
    whole
        .put(
            "jobs/run1/manifests/00000000000000000003.json.tmp-1-1",
            b"x",
        )
        .expect_err("the store itself refuses .tmp- keys");
    tokio_rt().block_on(async {
        for k in [
            "jobs/run1/manifests/00000000000000000003.json.tmp-1-1",
            "jobs/run1/folder/",
        ] {
            run.client()
                .put_object()
                .bucket(&b)
                .key(k)
                .body(b"x".to_vec().into())
                .send()
                .await
                .unwrap();
        }
    });

    assert_eq!(
        run.list("manifests/").unwrap(),
        vec![
            "manifests/00000000000000000001.json",
            "manifests/00000000000000000002.json"
        ]
    );
    assert_eq!(
        run.list("transactions/").unwrap(),
        vec![
            "transactions/date=2023-11-14/hour=03/e2.parquet",
            "transactions/date=2023-11-14/hour=22/e1.parquet",
            "transactions/date=2023-11-15/hour=00/e3.parquet",
        ]
    );
    assert_eq!(
        run.list("transactions/date=2023-11-15").unwrap(),
        vec!["transactions/date=2023-11-15/hour=00/e3.parquet"]
    );
    let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort();
    assert_eq!(run.list("").unwrap(), sorted);
    assert_eq!(run.list("t").unwrap().len(), 4);
    assert!(run.list("windows/").unwrap().is_empty());
    assert!(run.list("top/").unwrap().is_empty());
    assert!(run.list("/x").is_err());
    // Objects are read through the prefix.
    assert_eq!(run.get("top").unwrap().unwrap(), b"top");
    assert_eq!(whole.get("jobs/run1/top").unwrap().unwrap(), b"top");
    // The bucket-wide store sees everything, keys relative to the bucket.
    assert_eq!(
        whole.list("jobs/run1/manifests/").unwrap(),
        vec![
            "jobs/run1/manifests/00000000000000000001.json",
            "jobs/run1/manifests/00000000000000000002.json"
        ]
    );
    assert_eq!(whole.list("").unwrap().len(), keys.len() + 3);

    // Listing pages past ListObjectsV2's 1,000 keys.
    for i in 0..1100 {
        run.put(&format!("many/{i:05}"), b"").unwrap();
    }
    let many = run.list("many/").unwrap();
    assert_eq!(many.len(), 1100);
    assert!(many.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn large_objects_use_multipart_and_round_trip() {
    let st = store("big", "p");
    let a = noise(20 * MIB + 12345, 1);
    st.put("big/a.bin", &a).unwrap();
    assert!(st.get("big/a.bin").unwrap().unwrap() == a);
    // Overwrite with another large body, then with a small one.
    let b = noise(17 * MIB, 2);
    st.put("big/a.bin", &b).unwrap();
    assert!(st.get("big/a.bin").unwrap().unwrap() == b);
    st.put("big/a.bin", b"small").unwrap();
    assert_eq!(st.get("big/a.bin").unwrap().unwrap(), b"small");
    assert_eq!(open_uploads(&st), 0, "no multipart upload left open");

    // Conditional multipart create: first wins, second leaves it unchanged.
    let c = noise(20 * MIB, 3);
    assert!(st.put_if_absent("big/c.bin", &c).unwrap());
    let d = noise(20 * MIB, 4);
    assert!(!st.put_if_absent("big/c.bin", &d).unwrap());
    assert!(st.get("big/c.bin").unwrap().unwrap() == c);
    assert_eq!(open_uploads(&st), 0, "no multipart upload left open");
}

#[test]
fn conditional_multipart_race_has_exactly_one_winner() {
    // Both writers pass the existence check, upload all parts, and race on
    // CompleteMultipartUpload with If-None-Match: *.
    let st = Arc::new(store("bigrace", ""));
    let n = 3;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let st = st.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let body = noise(17 * MIB, 10 + i as u64);
                barrier.wait();
                let won = st.put_if_absent("k", &body).unwrap();
                (won, body)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter(|(won, _)| *won).collect();
    assert_eq!(winners.len(), 1);
    assert!(st.get("k").unwrap().unwrap() == winners[0].1);
    assert_eq!(open_uploads(&st), 0, "the losers' uploads are aborted");
}

#[test]
fn open_read_streams_the_object() {
    let st = store("stream", "in");
    let data = noise(20 * MIB + 7, 5);
    st.put("input/big.jsonl", &data).unwrap();
    let mut r = st.open_read("input/big.jsonl").unwrap();
    // Odd-sized reads, as a line reader would do.
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 65_537];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert_eq!(r.read(&mut buf).unwrap(), 0, "stays at end");

    // A reader dropped half way does not hang anything.
    let mut r = st.open_read("input/big.jsonl").unwrap();
    let mut head = vec![0u8; MIB];
    r.read_exact(&mut head).unwrap();
    assert!(head[..] == data[..MIB]);
    drop(r);

    // Small and empty objects; a missing key is an error naming it.
    st.put("small", b"hello").unwrap();
    let mut s = String::new();
    st.open_read("small")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello");
    st.put("empty", b"").unwrap();
    let mut v = Vec::new();
    st.open_read("empty").unwrap().read_to_end(&mut v).unwrap();
    assert!(v.is_empty());
    let err = format!("{:#}", st.open_read("nope").err().unwrap());
    assert!(
        err.contains("in/nope") && err.contains("NoSuchKey"),
        "{err}"
    );
}

/// A store on `bucket` reached through a proxy that can cut connections.
fn through_proxy(bucket: &str, prefix: &str) -> (CutProxy, S3Storage) {
    let addr = setup()
        .endpoint
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let proxy = CutProxy::start(addr);
    let st = S3Storage::new(
        &format!("s3://{bucket}/{prefix}"),
        &S3Options {
            endpoint: Some(proxy.endpoint.clone()),
            ..opts()
        },
    )
    .unwrap();
    (proxy, st)
}

#[test]
fn open_read_resumes_after_a_lost_connection() {
    let st = store("resume", "in");
    let data = noise(20 * MIB, 7);
    st.put("big", &data).unwrap();
    let (proxy, via) = through_proxy(st.bucket(), "in");
    proxy.cut_once_after(3 * MIB as u64, false);
    let mut got = Vec::new();
    via.open_read("big").unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(proxy.cuts(), 1, "the first response was cut");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "resumed bytes line up");
}

#[test]
fn open_read_refuses_to_resume_on_a_changed_object() {
    let st = store("changed", "");
    let data = noise(20 * MIB, 8);
    st.put("big", &data).unwrap();
    let (proxy, via) = through_proxy(st.bucket(), "");
    proxy.cut_once_after(MIB as u64, true);
    let mut r = via.open_read("big").unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).map(|_| got)
    });
    proxy.wait_for_cut(Duration::from_secs(60));
    // Replaced while the reader is cut off: the resumed read must not splice
    // the new object's tail onto the old one's head.
    st.put("big", &noise(20 * MIB, 9)).unwrap();
    proxy.release();
    match reader.join().unwrap() {
        Ok(got) => panic!(
            "read {} bytes ({}) after the object changed",
            got.len(),
            if got == data {
                "the old object"
            } else {
                "not the old object"
            }
        ),
        Err(e) => {
            let err = e.to_string();
            assert!(err.contains("changed while it was being read"), "{err}");
        }
    }
}

#[test]
fn errors_name_the_bucket_key_and_code() {
    let opts = opts();
    let b = bucket("missing");
    let st = S3Storage::new(&format!("s3://{b}/x"), &opts).unwrap(); // never created
    let err = format!("{:#}", st.put("k", b"v").unwrap_err());
    assert!(err.contains(&format!("s3://{b}/x/k")), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    // A missing bucket is an error, not a missing key.
    let err = format!("{:#}", st.get("k").unwrap_err());
    assert!(err.contains(&b) && err.contains("NoSuchBucket"), "{err}");
    let err = format!("{:#}", st.list("").unwrap_err());
    assert!(err.contains(&b) && err.contains("NoSuchBucket"), "{err}");
    let err = format!("{:#}", st.put_if_absent("k", b"v").unwrap_err());
    assert!(err.contains(&b) && err.contains("NoSuchBucket"), "{err}");
    let err = format!("{:#}", st.put("big", &noise(17 * MIB, 6)).unwrap_err());
    assert!(err.contains(&b) && err.contains("NoSuchBucket"), "{err}");
    assert!(st.delete("k").is_err());

    // An unreachable endpoint fails (after the SDK's retries) naming the object.
    let dead = S3Options {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..opts
    };
    let st = S3Storage::new("s3://some-bucket/p", &dead).unwrap();
    let err = format!("{:#}", st.get("k").unwrap_err());
    assert!(err.contains("s3://some-bucket/p/k"), "{err}");
}

#[test]
fn storage_open_with_an_s3_url() {
    let b = bucket("open");
    let st = storage::open_with(&format!("s3://{b}/a/b"), &opts()).unwrap();
    assert_eq!(st.describe(), format!("s3://{b}/a/b"));
    S3Storage::new(&format!("s3://{b}"), &opts())
        .unwrap()
        .create_bucket()
        .unwrap();
    st.put("k", b"v").unwrap();
    assert_eq!(st.get("k").unwrap().unwrap(), b"v");
    let mut s = String::new();
    st.open_read("k").unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "v");
}

/// A data file of `output` written to storage, as a manifest entry.
fn data_file(st: &dyn Storage, output: &str, key: &str, bytes: &[u8]) -> FileEntry {
    st.put(key, bytes).unwrap();
    FileEntry {
        output: output.into(),
        path: key.into(),
        rows: 1,
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }
}

#[test]
fn manifest_helpers_over_s3() {
    let st = store("manifest", "out");
    let st: &dyn Storage = &st;
    let epoch = 1_700_000_010_000;
    let key = format!(
        "transactions/date=2023-11-14/hour=22/{}",
        file_name(epoch, 1, 0, "parquet")
    );
    let f = data_file(st, "transactions", &key, b"parquet bytes of epoch 1");
    let state_key = format!("state/{}", file_name(epoch, 1, 0, "bin"));
    st.put(&state_key, b"state").unwrap();
    let m = Manifest::new(
        epoch,
        vec![f],
        JobSection {
            generation: 1,
            seq: 1,
            state: vec![StateFile {
                path: state_key.clone(),
                bytes: 5,
                sha256: sha256_hex(b"state"),
                worker: 0,
            }],
            ..Default::default()
        },
    );
    commit_log::commit(st, &m).unwrap();
    let mut other = m.clone();
    other.job.generation = 2;
    assert!(
        matches!(
            commit_log::commit(st, &other),
            Err(commit_log::CommitError::Conflict { seq: 1, .. })
        ),
        "a log position commits once"
    );
    assert!(verify(st, &m).is_empty());
    assert_eq!(manifest::list_manifests(st).unwrap(), vec![epoch]);
    let found = commit_log::newest_valid(st).unwrap();
    assert_eq!(found.newest.as_ref(), Some(&m));
    assert!(found.problems.is_empty(), "{:?}", found.problems);

    // Garbage: a file of an older generation that no manifest names goes;
    // committed files and files of the current generation stay.
    let stray = format!(
        "transactions/date=2023-11-14/hour=22/{}",
        file_name(epoch, 0, 3, "parquet")
    );
    st.put(&stray, b"uncommitted").unwrap();
    let current = format!("windows/{}", file_name(epoch + 10_000, 2, 0, "parquet"));
    st.put(&current, b"in flight").unwrap();
    assert_eq!(collect_garbage(st, 2).unwrap(), vec![stray.clone()]);
    assert_eq!(st.get(&stray).unwrap(), None);
    assert!(st.get(&key).unwrap().is_some());
    assert!(st.get(&state_key).unwrap().is_some());
    assert!(st.get(&current).unwrap().is_some());

    // Damage the data file: verify names it, and restore finds no valid epoch.
    st.put(&key, b"parquet bytes of epoch 2").unwrap(); // same size, other bytes
    let problems = verify(st, &m);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&key) && problems[0].contains("sha256"),
        "{problems:?}"
    );
    let found = commit_log::newest_valid(st).unwrap();
    assert_eq!(found.newest, None);
    assert!(
        found.problems.iter().any(|p| p.contains(&key)),
        "{:?}",
        found.problems
    );
    st.delete(&key).unwrap();
    assert!(verify(st, &m)[0].contains("missing"));
}
