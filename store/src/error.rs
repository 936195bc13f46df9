//! Storage errors, typed by what the caller may assume happened (the
//! distinction Materialize's persist draws between determinate and
//! indeterminate errors).

use std::fmt;

/// What a failed call may have done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Certainly no effect: the request was refused or never sent, or the
    /// call only reads. Retrying is safe and changes nothing.
    Failed,
    /// Maybe done: a write whose answer was lost (timeout, connection reset
    /// after sending, a server error mid-write). A retry must expect to
    /// meet its own effect: a conditional create may find its own object.
    Indeterminate,
}

/// A storage call that did not answer as asked, with its kind and a message
/// naming the store, the operation and the key.
#[derive(Debug)]
pub struct StoreError {
    kind: ErrorKind,
    source: anyhow::Error,
}

impl StoreError {
    pub fn new(kind: ErrorKind, source: impl Into<anyhow::Error>) -> StoreError {
        StoreError {
            kind,
            source: source.into(),
        }
    }
    /// Certainly had no effect.
    pub fn failed(source: impl Into<anyhow::Error>) -> StoreError {
        StoreError::new(ErrorKind::Failed, source)
    }
    /// May have taken effect.
    pub fn indeterminate(source: impl Into<anyhow::Error>) -> StoreError {
        StoreError::new(ErrorKind::Indeterminate, source)
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// Whether the call may have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        self.kind == ErrorKind::Indeterminate
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.source)
    }
}

impl std::error::Error for StoreError {}

/// An error built inside a backend keeps the kind of any [`StoreError`] in
/// its chain (an inner step that may have written), else it certainly failed.
impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> StoreError {
        let kind = e
            .chain()
            .find_map(|c| c.downcast_ref::<StoreError>().map(StoreError::kind))
            .unwrap_or(ErrorKind::Failed);
        StoreError { kind, source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_survives_context_and_the_message_keeps_it() {
        let inner = StoreError::indeterminate(anyhow::anyhow!("PutObject s3://b/k: timeout"));
        let wrapped = Err::<(), _>(anyhow::Error::new(inner))
            .context("committing epoch 5")
            .unwrap_err();
        let e = StoreError::from(wrapped);
        assert!(e.is_indeterminate());
        let text = e.to_string();
        assert!(
            text.contains("committing epoch 5") && text.contains("timeout"),
            "{text}"
        );
        // Anything else certainly failed.
        assert_eq!(
            StoreError::from(anyhow::anyhow!("no")).kind(),
            ErrorKind::Failed
        );
    }
}
