//! The one place where Redis errors become [`ThreadStoreError`]s.
//!
//! Retryability is decided here, where the error is born: timeouts, dropped
//! or refused connections and the server's own "try again later" answers
//! (`LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY`,
//! and a `MOVED` or `ASK` the cluster client could not follow)
//! are retryable; a refused login is [`ThreadStoreError::Authentication`]; a
//! key of the wrong type is [`ThreadStoreError::Corrupt`] for the thread it
//! belongs to; everything else (a script error, `OOM`, a protocol error) is
//! [`ThreadStoreError::Backend`] and not retryable.

use redis::{ErrorKind, RedisError, ServerErrorKind};
use task_store::ThreadStoreError;

/// A Redis error, with the thread it concerns when there is one.
#[derive(Debug)]
pub(crate) struct RedisFailure<'a> {
    pub(crate) error: RedisError,
    pub(crate) thread: Option<&'a str>,
}

impl RedisFailure<'_> {
    pub(crate) fn general(error: RedisError) -> Self {
        Self {
            error,
            thread: None,
        }
    }
}

impl From<RedisFailure<'_>> for ThreadStoreError {
    fn from(failure: RedisFailure<'_>) -> Self {
        let RedisFailure { error, thread } = failure;
        let message = error.to_string();
        if error.is_timeout() {
            return ThreadStoreError::Timeout {
                message: format!("Redis did not answer in time: {message}"),
                source: Some(std::sync::Arc::new(error)),
            };
        }
        // A pipeline's error carries the code of its first failed command.
        let code = error.code().map(str::to_owned).or_else(|| {
            error
                .clone()
                .into_server_errors()
                .and_then(|errors| errors.first().map(|(_, e)| e.code().to_owned()))
        });
        if let (Some("WRONGTYPE"), Some(id)) = (code.as_deref(), thread) {
            return ThreadStoreError::Corrupt {
                id: id.to_owned(),
                reason: format!("a key of the thread holds the wrong type: {message}"),
            };
        }
        match (error.kind(), code.as_deref()) {
            (ErrorKind::AuthenticationFailed, _)
            | (_, Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
            | (ErrorKind::Server(ServerErrorKind::NoPerm), _) => ThreadStoreError::Authentication {
                message,
                source: Some(std::sync::Arc::new(error)),
            },
            (
                ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask,
                ),
                _,
            )
            | (_, Some("BUSY" | "LOADING")) => ThreadStoreError::Unavailable {
                message: format!("Redis is unavailable: {message}"),
                source: Some(std::sync::Arc::new(error)),
            },
            _ => ThreadStoreError::Backend {
                message: format!("Redis failed: {message}"),
                source: Some(std::sync::Arc::new(error)),
            },
        }
    }
}

/// Adds the server's address to an error that happened while connecting.
pub(crate) fn with_target(err: ThreadStoreError, target: &str) -> ThreadStoreError {
    match err {
        ThreadStoreError::Unavailable { message, source } => ThreadStoreError::Unavailable {
            message: format!("cannot connect to {target}: {message}"),
            source,
        },
        ThreadStoreError::Timeout { message, source } => ThreadStoreError::Timeout {
            message: format!("cannot connect to {target}: {message}"),
            source,
        },
        ThreadStoreError::Authentication { message, source } => ThreadStoreError::Authentication {
            message: format!("{target} refused the credentials: {message}"),
            source,
        },
        other => other,
    }
}

/// The error of an item of a batch that was not sent because an earlier
/// part of the batch failed with `err`: of the same kind and with the same
/// source, so it is retryable when `err` was.
pub(crate) fn not_sent(err: &ThreadStoreError) -> ThreadStoreError {
    let message = format!("not sent, because an earlier part of the batch failed: {err}");
    match err.clone() {
        ThreadStoreError::Unavailable { source, .. } => {
            ThreadStoreError::Unavailable { message, source }
        }
        ThreadStoreError::Timeout { source, .. } => ThreadStoreError::Timeout { message, source },
        ThreadStoreError::Authentication { source, .. } => {
            ThreadStoreError::Authentication { message, source }
        }
        ThreadStoreError::Backend { source, .. } => ThreadStoreError::Backend { message, source },
        _ => ThreadStoreError::backend(message),
    }
}

/// The error of a batch item that got no result, which would be a bug.
pub(crate) fn missing_result() -> ThreadStoreError {
    ThreadStoreError::backend("a request of the batch got no result")
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn map(error: RedisError, thread: Option<&str>) -> ThreadStoreError {
        RedisFailure { error, thread }.into()
    }

    #[test]
    fn timeouts_and_dropped_connections_are_retryable() {
        let timeout = map(io::Error::from(io::ErrorKind::TimedOut).into(), None);
        assert!(
            matches!(timeout, ThreadStoreError::Timeout { .. }),
            "{timeout:?}"
        );
        assert!(timeout.is_retryable());
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let err = map(io::Error::from(kind).into(), Some("t"));
            assert!(
                matches!(err, ThreadStoreError::Unavailable { .. }),
                "{err:?}"
            );
            assert!(err.is_retryable());
        }
    }

    #[test]
    fn server_answers_map_to_their_meaning() {
        let loading = map(
            redis::make_extension_error("LOADING".into(), Some("loading the dataset".into())),
            None,
        );
        assert!(loading.is_retryable(), "{loading:?}");

        let wrongtype = map(
            redis::make_extension_error("WRONGTYPE".into(), Some("wrong kind".into())),
            Some("t1"),
        );
        assert!(
            matches!(&wrongtype, ThreadStoreError::Corrupt { id, .. } if id == "t1"),
            "{wrongtype:?}"
        );

        let auth = map(
            redis::make_extension_error("WRONGPASS".into(), Some("invalid password".into())),
            None,
        );
        assert!(
            matches!(auth, ThreadStoreError::Authentication { .. }),
            "{auth:?}"
        );
        assert!(!auth.is_retryable());

        let script = map(
            redis::make_extension_error("ERR".into(), Some("user_script:1: oops".into())),
            Some("t1"),
        );
        assert!(
            matches!(script, ThreadStoreError::Backend { .. }),
            "{script:?}"
        );
        assert!(!script.is_retryable());
    }
}
