//! [`Storage`] on the local filesystem under a root directory: keys are
//! relative paths, writes go to a temporary file that is renamed (`put`) or
//! hard-linked (`put_if_absent`, which never replaces a name) into place,
//! then the directory is synced.

use crate::{validate_key, validate_prefix, Result, Storage, StoreError, TMP_MARKER};
use anyhow::{anyhow, bail, Context};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    pub fn new(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
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

    fn path_of(&self, key: &str) -> anyhow::Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes `bytes` to a fresh temporary file beside `path` and fsyncs it.
    /// Creates the parent directories; retries when a concurrent `delete`
    /// pruned an empty parent directory between creating it and using it.
    fn write_tmp(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
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

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        out: &mut Vec<String>,
    ) -> anyhow::Result<()> {
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
fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
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
            return Err(anyhow!(e)
                .context(format!("renaming into {}", path.display()))
                .into());
        }
        // Renamed: the new bytes may be visible even if the sync fails.
        fsync_dir(path.parent().expect("key path has a parent")).map_err(StoreError::indeterminate)
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
                fsync_dir(path.parent().expect("key path has a parent"))
                    .map_err(StoreError::indeterminate)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(anyhow!(e)
                .context(format!("linking {}", path.display()))
                .into()),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(e)
                .context(format!("reading {}", path.display()))
                .into()),
        }
    }

    fn open_read(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>> {
        let path = self.path_of(key)?;
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Box::new(f))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        // Start at the deepest folder the prefix names in full.
        let (dir_rel, start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], self.root.join(&prefix[..i])),
            None => ("", self.root.clone()),
        };
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
            Err(e) => {
                return Err(anyhow!(e)
                    .context(format!("deleting {}", path.display()))
                    .into())
            }
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
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tidemark-store-{tag}-{}-{}",
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

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    //! What only the local backend promises; the shared contract is
    //! `crate::conformance`, run against every backend in `tests/`.
    use super::*;
    use crate::{open, open_with, S3Options};

    #[test]
    fn deletes_prune_empty_folders_and_keep_the_root() {
        let d = TempDir::new("prune");
        let st = d.storage();
        st.put("a/b/c.bin", b"one").unwrap();
        st.delete("a/b/c.bin").unwrap();
        assert!(!d.0.join("a").exists());
        assert!(d.0.is_dir());
    }

    #[test]
    fn temporary_files_are_never_left_or_listed() {
        let d = TempDir::new("tmp");
        let st = d.storage();
        assert!(st.put_if_absent("manifests/1.json", b"first").unwrap());
        assert!(!st.put_if_absent("manifests/1.json", b"second").unwrap());
        st.put("manifests/2.json", b"x").unwrap();
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&d.0.join("manifests")), vec!["1.json", "2.json"]);
        // A stray temporary file (as after a crash) is never listed.
        fs::write(d.0.join("manifests/3.json.tmp-1-1"), b"x").unwrap();
        assert_eq!(
            st.list("manifests/").unwrap(),
            vec!["manifests/1.json", "manifests/2.json"]
        );
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
