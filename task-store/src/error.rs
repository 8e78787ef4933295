//! The one error type of the storage contract.

use std::error::Error as StdError;
use std::sync::Arc;

/// The backend's own error that caused a [`ThreadStoreError`], shared so that
/// the error can be cloned without losing its source.
pub type SourceError = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when reading or writing threads.
///
/// Variants are semantic: a caller decides what to do from the variant alone,
/// whatever the backend. Backends map their own errors into these in one place.
///
/// Retryability is decided where the error is born, see
/// [`ThreadStoreError::is_retryable`]. A retryable error on a *write* means the
/// outcome is unknown: the write may or may not have been applied. Every write
/// of the contract is safe to retry (version preconditions and message ids make
/// a repeated write detectable), so retry it as it was.
///
/// Cloning is cheap and keeps the source (it is shared): a batch can report
/// one transport failure on each of its items, and a caller can keep an error
/// and hand it on.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ThreadStoreError {
    /// No thread has this id.
    #[error("thread '{id}' not found")]
    NotFound {
        /// The id that was looked up.
        id: String,
    },

    /// `create` was called for an id that is already taken.
    #[error("thread '{id}' already exists")]
    AlreadyExists {
        /// The id that is taken.
        id: String,
    },

    /// A [`VersionPrecondition::Exact`](crate::VersionPrecondition::Exact) did
    /// not hold; nothing was written.
    #[error("version conflict on thread '{id}': expected version {expected}, found {actual}")]
    VersionConflict {
        /// The thread written to.
        id: String,
        /// The version the writer expected.
        expected: u64,
        /// The version the store holds.
        actual: u64,
    },

    /// The request itself is wrong (an invalid id, a page limit of zero where
    /// it is refused, a state that is not an object...). Nothing was written.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong, in words a caller can act on.
        reason: String,
    },

    /// The backend cannot honour this request (for example a precondition it
    /// has no way to check). It refuses rather than silently ignoring it.
    #[error("unsupported by this backend: {reason}")]
    Unsupported {
        /// What cannot be honoured, and why.
        reason: String,
    },

    /// The backend could not be reached or dropped the connection. Retryable;
    /// on a write the outcome is unknown.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<SourceError>,
    },

    /// The backend did not answer in time. Retryable; on a write the outcome
    /// is unknown.
    #[error("store timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<SourceError>,
    },

    /// The backend refused the credentials. Not retryable.
    #[error("authentication with the store failed: {message}")]
    Authentication {
        /// The backend's words.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<SourceError>,
    },

    /// A stored record could not be decoded. Only the named thread is
    /// affected; other threads stay readable.
    #[error("thread '{id}' holds corrupt data: {reason}")]
    Corrupt {
        /// The thread whose record is corrupt.
        id: String,
        /// What could not be decoded.
        reason: String,
    },

    /// Any other backend failure that is not known to be transient
    /// (a script error, a protocol error). Not retryable.
    #[error("store error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<SourceError>,
    },
}

impl ThreadStoreError {
    /// Whether repeating the same request may succeed: true for
    /// [`Unavailable`](Self::Unavailable) and [`Timeout`](Self::Timeout), false
    /// for everything else. A version conflict is not retryable as such: the
    /// caller must reload and decide again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// Whether this is a [`VersionConflict`](Self::VersionConflict).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::VersionConflict { .. })
    }

    /// Whether this is a [`NotFound`](Self::NotFound).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// An [`InvalidInput`](Self::InvalidInput) error with this reason.
    pub fn invalid_input(reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            reason: reason.into(),
        }
    }

    /// An [`Unavailable`](Self::Unavailable) error without a source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Unavailable`](Self::Unavailable) error caused by `source`.
    pub fn unavailable_from(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A [`Timeout`](Self::Timeout) error caused by `source`.
    pub fn timeout_from(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self::Timeout {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A [`Backend`](Self::Backend) error without a source.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// A [`Corrupt`](Self::Corrupt) error for thread `id`.
    pub fn corrupt(id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            id: id.into(),
            reason: reason.into(),
        }
    }
}

/// The result of every store operation.
pub type Result<T, E = ThreadStoreError> = std::result::Result<T, E>;
