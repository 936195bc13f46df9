//! [`Storage`] in memory that misbehaves on command: for tests of what the
//! job does when its store fails, hangs or loses answers, without a server.
//!
//! Faults are rules: an operation kind, a key prefix, what to do
//! ([`Fault`]) and how many times. The first rule that matches a call is
//! used up by it; calls no rule matches behave as a correct store.

use crate::{validate_key, validate_prefix, Result, Storage, StoreError};
use anyhow::anyhow;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};

/// The operations of [`Storage`], for fault rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    PutIfAbsent,
    Get,
    List,
    Delete,
}

/// What a matched call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with no effect ([`crate::ErrorKind::Failed`]).
    Fail,
    /// Takes effect, then answers with an error as if the response were
    /// lost ([`crate::ErrorKind::Indeterminate`]).
    LoseResponse,
    /// Blocks until [`MemoryStorage::release`], then behaves correctly.
    Hang,
}

struct Rule {
    op: Op,
    prefix: String,
    fault: Fault,
    /// Calls left; `None`: every matching call until [`MemoryStorage::heal`].
    left: Option<usize>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Vec<u8>>,
    rules: Vec<Rule>,
    /// Bumped by `release`: hung calls wait for a change.
    released: u64,
    /// Calls hanging right now.
    hanging: usize,
    /// Calls answered with an injected fault.
    faults: u64,
}

/// An in-memory object store with fault injection.
#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
    wake: Condvar,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// The next `times` calls of `op` on keys starting with `prefix` (`""`:
    /// any key; for `List`, the prefix listed) do `fault`.
    pub fn inject(&self, op: Op, prefix: &str, fault: Fault, times: usize) {
        self.rule(op, prefix, fault, Some(times));
    }

    /// Every call of `op` on keys starting with `prefix` does `fault` until
    /// [`heal`](Self::heal): an outage.
    pub fn outage(&self, op: Op, prefix: &str, fault: Fault) {
        self.rule(op, prefix, fault, None);
    }

    fn rule(&self, op: Op, prefix: &str, fault: Fault, left: Option<usize>) {
        self.state.lock().unwrap().rules.push(Rule {
            op,
            prefix: prefix.to_owned(),
            fault,
            left,
        });
    }

    /// Drops every fault rule (calls already hanging stay until `release`).
    pub fn heal(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Lets every hanging call go on.
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.released += 1;
        self.wake.notify_all();
    }

    /// Calls hanging now.
    pub fn hanging(&self) -> usize {
        self.state.lock().unwrap().hanging
    }

    /// Calls answered with an injected fault so far.
    pub fn faults(&self) -> u64 {
        self.state.lock().unwrap().faults
    }

    /// Applies the first matching rule: `Some(fault)` to fail or lose the
    /// answer; hangs here for [`Fault::Hang`].
    fn fault(&self, op: Op, key: &str) -> Option<Fault> {
        let mut s = self.state.lock().unwrap();
        let i = s
            .rules
            .iter()
            .position(|r| r.op == op && key.starts_with(&r.prefix))?;
        let rule = &mut s.rules[i];
        let fault = rule.fault;
        if let Some(n) = rule.left.as_mut() {
            *n -= 1;
            if *n == 0 {
                s.rules.remove(i);
            }
        }
        s.faults += 1;
        if fault == Fault::Hang {
            let at = s.released;
            s.hanging += 1;
            let mut s = self.wake.wait_while(s, |s| s.released == at).unwrap();
            s.hanging -= 1;
            return None;
        }
        Some(fault)
    }

    /// Runs `op` on `key` under the fault rules: `f` is the effect.
    fn call<T>(&self, op: Op, key: &str, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        match self.fault(op, key) {
            Some(Fault::Fail) => Err(StoreError::failed(anyhow!(
                "memory store {op:?} {key}: injected failure"
            ))),
            Some(Fault::LoseResponse) => {
                f(&mut self.state.lock().unwrap());
                Err(StoreError::indeterminate(anyhow!(
                    "memory store {op:?} {key}: injected lost response (the call took effect)"
                )))
            }
            _ => Ok(f(&mut self.state.lock().unwrap())),
        }
    }
}

impl Storage for MemoryStorage {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        validate_key(key)?;
        self.call(Op::Put, key, |s| {
            s.objects.insert(key.to_owned(), bytes.to_vec());
        })
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        validate_key(key)?;
        self.call(Op::PutIfAbsent, key, |s| {
            if s.objects.contains_key(key) {
                false
            } else {
                s.objects.insert(key.to_owned(), bytes.to_vec());
                true
            }
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        self.call(Op::Get, key, |s| s.objects.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        self.call(Op::List, prefix, |s| {
            s.objects
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.call(Op::Delete, key, |s| {
            s.objects.remove(key);
        })
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn url(&self, key: &str) -> String {
        format!("memory:{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn faults_do_what_they_say_and_only_as_often_as_asked() {
        let st = MemoryStorage::new();
        st.inject(Op::Put, "state/", Fault::Fail, 2);
        for _ in 0..2 {
            let e = st.put("state/a", b"1").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Failed);
            assert_eq!(
                st.get("state/a").unwrap(),
                None,
                "a failed put has no effect"
            );
        }
        st.put("state/a", b"1").unwrap();
        st.put("other", b"x").unwrap();

        // A lost response: the create happened, the caller cannot know.
        st.inject(Op::PutIfAbsent, "manifests/", Fault::LoseResponse, 1);
        let e = st.put_if_absent("manifests/1", b"m").unwrap_err();
        assert!(e.is_indeterminate(), "{e}");
        assert_eq!(st.get("manifests/1").unwrap().as_deref(), Some(&b"m"[..]));
        assert!(!st.put_if_absent("manifests/1", b"m").unwrap());

        // An outage lasts until healed.
        st.outage(Op::Get, "", Fault::Fail);
        for _ in 0..5 {
            assert!(st.get("other").is_err());
        }
        st.heal();
        assert_eq!(st.get("other").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(st.faults(), 2 + 1 + 5);
    }

    #[test]
    fn a_hung_call_waits_for_release_then_takes_effect() {
        let st = Arc::new(MemoryStorage::new());
        st.inject(Op::Put, "k", Fault::Hang, 1);
        let t = {
            let st = st.clone();
            std::thread::spawn(move || st.put("k", b"v"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while st.hanging() == 0 {
            assert!(std::time::Instant::now() < deadline, "never hung");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "a hung call returned");
        assert_eq!(st.get("k").unwrap(), None);
        st.release();
        t.join().unwrap().unwrap();
        assert_eq!(st.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(st.hanging(), 0);
    }
}
