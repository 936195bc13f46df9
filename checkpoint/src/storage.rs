//! Where outputs, state snapshots and manifests live: an object store seen as
//! flat keys (`manifests/00000001700000010000.json`,
//! `transactions/date=2023-11-14/hour=22/e…-g1-w0000.parquet`).
//!
//! Keys are relative to the store's root, use `/` as separator and have no
//! empty, `.` or `..` segments. The local implementation maps them onto files
//! under a root directory; [`S3Storage`] maps them onto object keys under a
//! bucket prefix. Callers never see paths.
//!
//! What the commit protocol relies on:
//! - [`Storage::put`] replaces the object atomically: a reader sees the old
//!   bytes or the new ones, never a prefix.
//! - [`Storage::put_if_absent`] is an atomic conditional create (S3
//!   `If-None-Match: *`): when many writers race on one key, exactly one wins
//!   and the object holds exactly its bytes.
//! - Neither leaves a partial object under the key after a crash. The local
//!   store writes to a temporary file beside the target
//!   (`<name>.tmp-<pid>-<n>`); such files are never listed and keys may not
//!   contain `.tmp-`.

pub use crate::s3::{S3Options, S3Storage};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The marker in temporary file names; keys containing it are reserved.
const TMP_MARKER: &str = ".tmp-";

/// An object store: keys to immutable-ish byte blobs.
pub trait Storage: Send + Sync + 'static {
    /// Store `bytes` under `key`, replacing any previous object atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Create `key` holding `bytes` only if it does not exist yet, atomically.
    /// Returns `false` (and changes nothing) when the key already exists.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// The object's bytes, `None` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every key that starts with `prefix` (recursively, object-store style:
    /// `"manifests/"` lists that folder, `"manifests/0000"` filters by name
    /// too), sorted bytewise. Temporary files are never listed.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// A streaming reader of the object's bytes, for objects too large to
    /// hold in memory (backfill inputs). A missing key is an error. Call it
    /// from plain threads: the S3 reader blocks on its own runtime.
    ///
    /// The default reads the whole object with [`Storage::get`]; stores that
    /// hold large objects ([`LocalStorage`], [`S3Storage`]) stream instead.
    fn open_read(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>> {
        let bytes = self
            .get(key)?
            .ok_or_else(|| anyhow!("{key} not found in {}", self.describe()))?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }
    /// Remove `key`; a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Human-readable location, for logs (`local:/data/out`, `s3://b/p`).
    fn describe(&self) -> String;
    /// Where other tools find `key`: `s3://bucket/prefix/key` on S3, an
    /// absolute path on local disk. Written into Redshift COPY manifests.
    fn url(&self, key: &str) -> String;
}

/// Opens the storage named by a URL or a local path: `s3://bucket/prefix`
/// opens an [`S3Storage`] configured by [`S3Options::from_env`];
/// `file://…` and plain paths open a [`LocalStorage`] (the directory is
/// created when missing).
pub fn open(url_or_path: &str) -> Result<Arc<dyn Storage>> {
    if url_or_path.starts_with("s3://") {
        return open_with(url_or_path, &S3Options::from_env());
    }
    open_with(url_or_path, &S3Options::default())
}

/// [`open`] with explicit S3 options (ignored for local paths).
pub fn open_with(url_or_path: &str, s3: &S3Options) -> Result<Arc<dyn Storage>> {
    if url_or_path.starts_with("s3://") {
        return Ok(Arc::new(S3Storage::new(url_or_path, s3)?));
    }
    let path = url_or_path.strip_prefix("file://").unwrap_or(url_or_path);
    if path.is_empty() {
        bail!("empty storage path");
    }
    Ok(Arc::new(LocalStorage::new(path)?))
}

/// Checks that `key` is a well-formed object key (see the module docs).
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        bail!("empty storage key");
    }
    if key.contains('\0') {
        bail!("storage key {key:?} contains NUL");
    }
    if key.contains(TMP_MARKER) {
        bail!("storage key {key:?} contains the reserved marker {TMP_MARKER:?}");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            bail!("storage key {key:?} has an empty, '.' or '..' segment");
        }
    }
    Ok(())
}

/// Storage on the local filesystem under a root directory.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
}

/// Distinguishes temporary files written concurrently by one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How often a write is retried when a concurrent delete removed the freshly
/// created (empty) parent directory under it.
const DIR_RACE_RETRIES: usize = 8;

impl LocalStorage {
    /// A store rooted at `root`, created (with its parents) when missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)
            .with_context(|| format!("creating storage root {}", root.display()))?;
        if !root.is_dir() {
            bail!("storage root {} is not a directory", root.display());
        }
        Ok(LocalStorage { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes `bytes` to a fresh temporary file beside `path` and fsyncs it.
    /// Creates the parent directories; retries when a concurrent `delete`
    /// pruned an empty parent directory between creating it and using it.
    fn write_tmp(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf> {
        let parent = path
            .parent()
            .ok_or_else(|| anyhow!("no parent directory for {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad file name {}", path.display()))?;
        let mut attempt = 0;
        loop {
            fs::create_dir_all(parent)
                .with_context(|| format!("creating directory {}", parent.display()))?;
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = parent.join(format!("{name}{TMP_MARKER}{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(mut f) => {
                    let res = f.write_all(bytes).and_then(|_| f.sync_all());
                    if let Err(e) = res {
                        let _ = fs::remove_file(&tmp);
                        return Err(e).with_context(|| format!("writing {}", tmp.display()));
                    }
                    return Ok(tmp);
                }
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < DIR_RACE_RETRIES => {
                    attempt += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
            }
        }
    }

    /// Removes empty directories from `dir` up to (not including) the root.
    /// Best effort: a directory that is not empty (or is being filled) stays.
    fn prune_empty_dirs(&self, mut dir: &Path) {
        while dir != self.root && dir.starts_with(&self.root) {
            if fs::remove_dir(dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }

    fn walk(&self, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // No such folder, or a file where the prefix names a folder: no keys.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(())
            }
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                // Removed while we were listing.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not a valid key
            };
            let key = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let mut ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("stat {key}")),
            };
            if ft.is_symlink() {
                match fs::metadata(entry.path()) {
                    Ok(m) => ft = m.file_type(),
                    Err(_) => continue, // dangling link
                }
            }
            if ft.is_dir() {
                // Descend only where keys can still match the prefix.
                let dir_key = format!("{key}/");
                if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                    self.walk(&entry.path(), &key, prefix, out)?;
                }
            } else if ft.is_file() && !name.contains(TMP_MARKER) && key.starts_with(prefix) {
                out.push(key);
            }
        }
        Ok(())
    }
}

/// Makes a directory's entries (a new name, a rename) durable.
fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

impl Storage for LocalStorage {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path_of(key)?;
        let tmp = self.write_tmp(&path, bytes)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("renaming into {}", path.display()));
        }
        fsync_dir(path.parent().expect("key path has a parent"))
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path_of(key)?;
        if path.exists() {
            return Ok(false);
        }
        let tmp = self.write_tmp(&path, bytes)?;
        // link(2) never replaces an existing name: the atomic O_EXCL of whole files.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsync_dir(path.parent().expect("key path has a parent"))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("linking {}", path.display())),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn open_read(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>> {
        let path = self.path_of(key)?;
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        if prefix.contains('\0') || prefix.starts_with('/') {
            bail!("bad storage prefix {prefix:?}");
        }
        // Start at the deepest folder the prefix names in full.
        let (dir_rel, start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], self.root.join(&prefix[..i])),
            None => ("", self.root.clone()),
        };
        if dir_rel.split('/').any(|s| s == "..") {
            bail!("bad storage prefix {prefix:?}");
        }
        let mut out = Vec::new();
        self.walk(&start, dir_rel, prefix, &mut out)?;
        out.sort_unstable();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
        }
        // Object stores have no folders: don't leave empty ones behind.
        if let Some(parent) = path.parent() {
            self.prune_empty_dirs(parent);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn url(&self, key: &str) -> String {
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        root.join(key).display().to_string()
    }
}

/// A scratch directory for tests, removed on drop.
#[cfg(test)]
pub(crate) struct TempDir(pub PathBuf);

#[cfg(test)]
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tidemark-ckpt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn storage(&self) -> LocalStorage {
        LocalStorage::new(&self.0).unwrap()
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn put_get_overwrite_delete() {
        let d = TempDir::new("put");
        let st = d.storage();
        assert_eq!(st.get("a/b/c.bin").unwrap(), None);
        st.put("a/b/c.bin", b"one").unwrap();
        assert_eq!(st.get("a/b/c.bin").unwrap().as_deref(), Some(&b"one"[..]));
        st.put("a/b/c.bin", b"two!").unwrap();
        assert_eq!(st.get("a/b/c.bin").unwrap().as_deref(), Some(&b"two!"[..]));
        st.delete("a/b/c.bin").unwrap();
        assert_eq!(st.get("a/b/c.bin").unwrap(), None);
        // Missing is fine; empty folders are pruned, the root stays.
        st.delete("a/b/c.bin").unwrap();
        st.delete("nothing/here").unwrap();
        assert!(!d.0.join("a").exists());
        assert!(d.0.is_dir());
        // Empty payloads are objects too.
        st.put("empty", b"").unwrap();
        assert_eq!(st.get("empty").unwrap(), Some(vec![]));
    }

    #[test]
    fn put_if_absent_creates_once() {
        let d = TempDir::new("pia");
        let st = d.storage();
        assert!(st.put_if_absent("manifests/1.json", b"first").unwrap());
        assert!(!st.put_if_absent("manifests/1.json", b"second").unwrap());
        assert_eq!(
            st.get("manifests/1.json").unwrap().as_deref(),
            Some(&b"first"[..])
        );
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(d.0.join("manifests"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["1.json".to_string()]);
    }

    #[test]
    fn put_if_absent_concurrent_exactly_one_wins() {
        let d = TempDir::new("race");
        let st = Arc::new(d.storage());
        for round in 0..5 {
            let key = format!("manifests/{round:020}.json");
            let n = 16;
            let barrier = Arc::new(Barrier::new(n));
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let st = st.clone();
                    let barrier = barrier.clone();
                    let key = key.clone();
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
            assert_eq!(winners.len(), 1, "round {round}");
            assert_eq!(
                st.get(&key).unwrap().unwrap(),
                winners[0].1.as_bytes(),
                "the object holds exactly the winner's bytes"
            );
        }
        assert_eq!(st.list("").unwrap().len(), 5);
    }

    #[test]
    fn list_is_recursive_sorted_and_prefix_filtered() {
        let d = TempDir::new("list");
        let st = d.storage();
        for k in [
            "transactions/date=2023-11-14/hour=22/e1.parquet",
            "transactions/date=2023-11-14/hour=03/e2.parquet",
            "transactions/date=2023-11-15/hour=00/e3.parquet",
            "manifests/00000000000000000002.json",
            "manifests/00000000000000000001.json",
            "rejects/x.parquet",
            "top",
        ] {
            st.put(k, k.as_bytes()).unwrap();
        }
        // A stray temporary file (as after a crash) is never listed.
        fs::write(
            d.0.join("manifests/00000000000000000003.json.tmp-1-1"),
            b"x",
        )
        .unwrap();
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
        assert_eq!(st.list("").unwrap().len(), 7);
        assert_eq!(st.list("t").unwrap().len(), 4);
        assert!(st.list("windows/").unwrap().is_empty());
        assert!(st.list("nope/deeper/").unwrap().is_empty());
        assert!(st.list("top/").unwrap().is_empty());
        assert!(st.list("top/x/").unwrap().is_empty());
    }

    #[test]
    fn bad_keys_are_refused() {
        let d = TempDir::new("keys");
        let st = d.storage();
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
            assert!(st.put(k, b"x").is_err(), "{k:?}");
            assert!(st.get(k).is_err(), "{k:?}");
        }
        assert!(st.list("../").is_err());
    }

    #[test]
    fn open_paths_and_urls() {
        let d = TempDir::new("open");
        let sub = d.0.join("out/root");
        let st = open(sub.to_str().unwrap()).unwrap();
        st.put("k", b"v").unwrap();
        assert!(sub.join("k").is_file());
        assert!(st.describe().starts_with("local:"));
        let st2 = open(&format!("file://{}", sub.display())).unwrap();
        assert_eq!(st2.get("k").unwrap().unwrap(), b"v");
        let mut r = st.open_read("k").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut r, &mut s).unwrap();
        assert_eq!(s, "v");
        assert!(st.open_read("missing").is_err());
        // S3 URLs open an S3 store (no request is sent until it is used).
        let opts = S3Options {
            region: Some("us-east-1".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            path_style: None,
        };
        let s3 = open_with("s3://bucket/prefix/", &opts).unwrap();
        assert_eq!(s3.describe(), "s3://bucket/prefix");
        let err = open("s3://").err().unwrap().to_string();
        assert!(err.contains("bucket name"), "{err}");
    }
}
