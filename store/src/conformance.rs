//! The contract every [`Storage`] backend keeps, as one suite: local disk,
//! S3 (against a real S3 API server in `store/tests`) and memory all run
//! it. Call [`run`] on an empty store; it panics on the first breach.

use crate::Storage;
use std::io::Read;
use std::sync::{Arc, Barrier};

/// Runs every check on `st`, which must be empty.
pub fn run(st: Arc<dyn Storage>) {
    assert!(
        st.list("").unwrap().is_empty(),
        "the store must start empty"
    );
    put_get_overwrite_delete(&*st);
    put_if_absent_creates_once(&*st);
    put_if_absent_race_has_one_winner(&st);
    list_is_recursive_sorted_and_prefix_filtered(&*st);
    bad_keys_are_refused(&*st);
    open_read_streams_whole_objects(&*st);
    for k in st.list("").unwrap() {
        st.delete(&k).unwrap();
    }
    assert!(st.list("").unwrap().is_empty(), "everything deleted");
}

fn put_get_overwrite_delete(st: &dyn Storage) {
    assert_eq!(st.get("a/b/c.bin").unwrap(), None);
    st.put("a/b/c.bin", b"one").unwrap();
    assert_eq!(st.get("a/b/c.bin").unwrap().as_deref(), Some(&b"one"[..]));
    st.put("a/b/c.bin", b"two!").unwrap();
    assert_eq!(st.get("a/b/c.bin").unwrap().as_deref(), Some(&b"two!"[..]));
    st.delete("a/b/c.bin").unwrap();
    assert_eq!(st.get("a/b/c.bin").unwrap(), None);
    // Deleting what is missing is fine.
    st.delete("a/b/c.bin").unwrap();
    st.delete("nothing/here").unwrap();
    assert!(st.list("a/").unwrap().is_empty());
    // Empty payloads are objects too.
    st.put("empty", b"").unwrap();
    assert_eq!(st.get("empty").unwrap(), Some(vec![]));
    st.delete("empty").unwrap();
}

fn put_if_absent_creates_once(st: &dyn Storage) {
    assert!(st.put_if_absent("pia/1.json", b"first").unwrap());
    assert!(!st.put_if_absent("pia/1.json", b"second").unwrap());
    assert_eq!(
        st.get("pia/1.json").unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(st.list("pia/").unwrap(), vec!["pia/1.json"]);
    // After a delete the key can be created again.
    st.delete("pia/1.json").unwrap();
    assert!(st.put_if_absent("pia/1.json", b"third").unwrap());
    assert_eq!(st.get("pia/1.json").unwrap().unwrap(), b"third");
    st.delete("pia/1.json").unwrap();
}

fn put_if_absent_race_has_one_winner(st: &Arc<dyn Storage>) {
    for round in 0..3 {
        let key = format!("race/{round:020}.json");
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (st, barrier, key) = (st.clone(), barrier.clone(), key.clone());
                std::thread::spawn(move || {
                    let payload = format!("writer {i} {}", "x".repeat(i * 1000));
                    barrier.wait();
                    let won = st.put_if_absent(&key, payload.as_bytes()).unwrap();
                    (won, payload)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(won, _)| *won).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        assert_eq!(
            st.get(&key).unwrap().unwrap(),
            winners[0].1.as_bytes(),
            "the object holds exactly the winner's bytes"
        );
        st.delete(&key).unwrap();
    }
}

fn list_is_recursive_sorted_and_prefix_filtered(st: &dyn Storage) {
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
        st.put(k, k.as_bytes()).unwrap();
    }
    assert_eq!(
        st.list("manifests/").unwrap(),
        vec![
            "manifests/00000000000000000001.json",
            "manifests/00000000000000000002.json"
        ]
    );
    assert_eq!(
        st.list("transactions/").unwrap(),
        vec![
            "transactions/date=2023-11-14/hour=03/e2.parquet",
            "transactions/date=2023-11-14/hour=22/e1.parquet",
            "transactions/date=2023-11-15/hour=00/e3.parquet",
        ]
    );
    assert_eq!(
        st.list("transactions/date=2023-11-15").unwrap(),
        vec!["transactions/date=2023-11-15/hour=00/e3.parquet"]
    );
    let mut all: Vec<&str> = keys.to_vec();
    all.sort_unstable();
    assert_eq!(st.list("").unwrap(), all);
    assert_eq!(st.list("t").unwrap().len(), 4);
    assert!(st.list("windows/").unwrap().is_empty());
    assert!(st.list("nope/deeper/").unwrap().is_empty());
    assert!(st.list("top/").unwrap().is_empty());
    for k in keys {
        st.delete(k).unwrap();
    }
}

fn bad_keys_are_refused(st: &dyn Storage) {
    for k in [
        "",
        "/abs",
        "a//b",
        "a/../b",
        "..",
        "a/./b",
        "x.tmp-1-2",
        "dir/",
    ] {
        assert!(st.put(k, b"x").is_err(), "put {k:?}");
        assert!(st.get(k).is_err(), "get {k:?}");
        assert!(st.put_if_absent(k, b"x").is_err(), "put_if_absent {k:?}");
    }
    assert!(st.list("../").is_err());
    assert!(st.list("").unwrap().is_empty(), "nothing was written");
}

fn open_read_streams_whole_objects(st: &dyn Storage) {
    let big: Vec<u8> = (0..(1usize << 20) + 17)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    st.put("big/object.bin", &big).unwrap();
    let mut back = Vec::new();
    st.open_read("big/object.bin")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "open_read returned other bytes");
    assert!(st.open_read("big/missing.bin").is_err());
    st.delete("big/object.bin").unwrap();
}
