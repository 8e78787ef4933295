//! The one place where PostgreSQL, driver and pool errors become
//! [`ThreadStoreError`]s.
//!
//! Retryability is decided here, where the error is born, from the
//! SQLSTATE the server sent or from what the driver saw:
//!
//! | what happened | SQLSTATE | error | retryable |
//! |---|---|---|---|
//! | serialization failure, deadlock (after the store's own retries: the transaction was rolled back, nothing was written) | `40001`, `40P01` | `Unavailable` | yes |
//! | outcome of the commit unknown | `40003` | `Unavailable` | yes |
//! | statement, lock or idle timeout | `57014`, `55P03`, `25P03` | `Timeout` | yes |
//! | the server is shutting down, crashed, starting up or in recovery; a connection failure; too many connections; a read-only standby | `57P01`, `57P02`, `57P03`, class `08`, `53300`, `25006` | `Unavailable` | yes |
//! | a dropped or refused connection, an I/O error | (none) | `Unavailable` | yes |
//! | no answer within the response timeout; no connection within the connect or pool timeouts | (none) | `Timeout` | yes |
//! | wrong password, unknown role, no privilege | `28P01`, `28000`, `42501` | `Authentication` | no |
//! | anything else (a missing database, a full disk, a bug) | any | `Backend` | no |
//!
//! A row that cannot be decoded is [`ThreadStoreError::Corrupt`] for its
//! thread alone; the store reports that where it decodes rows.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{PoolError, TimeoutType};
use task_store::ThreadStoreError;
use tokio_postgres::error::SqlState;

/// Something that went wrong talking to PostgreSQL.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The driver's error (the server's, or the connection's).
    Pg(tokio_postgres::Error),
    /// The pool could not hand out a connection.
    Pool(PoolError),
    /// The server did not answer within the response timeout.
    Elapsed(Duration),
}

impl From<tokio_postgres::Error> for Fault {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Pg(error)
    }
}

impl From<PoolError> for Fault {
    fn from(error: PoolError) -> Self {
        Self::Pool(error)
    }
}

impl Fault {
    /// Whether the server rolled the transaction back because of a
    /// serialization failure or a deadlock: nothing was written, and the
    /// same statement may simply be run again.
    pub(crate) fn is_rolled_back_race(&self) -> bool {
        match self {
            Self::Pg(error) | Self::Pool(PoolError::Backend(error)) => is_race(error),
            _ => false,
        }
    }
}

/// Whether the server rolled a statement back because of a serialization
/// failure or a deadlock (see [`Fault::is_rolled_back_race`]).
pub(crate) fn is_race(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| class_of(code) == Class::RolledBack)
}

/// A fault, with the thread it concerns when there is one.
#[derive(Debug)]
pub(crate) struct Failure<'a> {
    pub(crate) fault: Fault,
    pub(crate) thread: Option<&'a str>,
}

impl<'a> Failure<'a> {
    /// A mapper for faults met while writing or reading `thread`.
    pub(crate) fn on(thread: &'a str) -> impl FnOnce(Fault) -> ThreadStoreError + 'a {
        move |fault| {
            Self {
                fault,
                thread: Some(thread),
            }
            .into()
        }
    }

    /// Maps a fault that concerns no single thread.
    pub(crate) fn general(fault: Fault) -> ThreadStoreError {
        Self {
            fault,
            thread: None,
        }
        .into()
    }
}

/// What a SQLSTATE means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Rolled back by a race with another transaction.
    RolledBack,
    Timeout,
    Unavailable,
    Authentication,
    Other,
}

fn class_of(code: &SqlState) -> Class {
    let code = code.code();
    match code {
        "40001" | "40P01" => Class::RolledBack,
        "57014" | "55P03" | "25P03" => Class::Timeout,
        "40003" | "57P01" | "57P02" | "57P03" | "53300" | "25006" => Class::Unavailable,
        _ if code.starts_with("08") => Class::Unavailable,
        "28P01" | "28000" | "42501" => Class::Authentication,
        _ => Class::Other,
    }
}

impl From<Failure<'_>> for ThreadStoreError {
    fn from(failure: Failure<'_>) -> Self {
        let on = failure
            .thread
            .map(|id| format!(" (thread '{id}')"))
            .unwrap_or_default();
        match failure.fault {
            Fault::Elapsed(after) => ThreadStoreError::Timeout {
                message: format!(
                    "PostgreSQL did not answer within {after:?}{on}; the connection was closed"
                ),
                source: None,
            },
            Fault::Pool(PoolError::Backend(error)) | Fault::Pg(error) => map_pg(error, &on),
            Fault::Pool(PoolError::Timeout(kind)) => {
                let what = match kind {
                    TimeoutType::Wait => "no pooled connection became free in time",
                    TimeoutType::Create => "opening a connection took too long",
                    TimeoutType::Recycle => "checking a pooled connection took too long",
                };
                ThreadStoreError::Timeout {
                    message: format!("PostgreSQL: {what}{on}"),
                    source: None,
                }
            }
            Fault::Pool(other) => ThreadStoreError::Backend {
                message: format!("the PostgreSQL connection pool failed{on}: {other}"),
                source: Some(Arc::new(other)),
            },
        }
    }
}

fn map_pg(error: tokio_postgres::Error, on: &str) -> ThreadStoreError {
    let server = error.as_db_error().map(|db| {
        (
            class_of(db.code()),
            format!(
                "PostgreSQL: {} (SQLSTATE {}){on}",
                db.message(),
                db.code().code()
            ),
        )
    });
    if let Some((class, message)) = server {
        let source = Some(Arc::new(error) as task_store::SourceError);
        return match class {
            Class::RolledBack => ThreadStoreError::Unavailable {
                message: format!("{message}; the transaction was rolled back, retry it"),
                source,
            },
            Class::Timeout => ThreadStoreError::Timeout { message, source },
            Class::Unavailable => ThreadStoreError::Unavailable { message, source },
            Class::Authentication => ThreadStoreError::Authentication { message, source },
            Class::Other => ThreadStoreError::Backend { message, source },
        };
    }
    let text = error.to_string();
    let cause = std::error::Error::source(&error).map(ToString::to_string);
    let message = match &cause {
        Some(cause) => format!("PostgreSQL: {text}: {cause}{on}"),
        None => format!("PostgreSQL: {text}{on}"),
    };
    let io_kind = std::error::Error::source(&error)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    let source = Some(Arc::new(error) as task_store::SourceError);
    // The driver's error kinds are private; its messages name them.
    if io_kind == Some(std::io::ErrorKind::TimedOut) || text.starts_with("timeout") {
        ThreadStoreError::Timeout { message, source }
    } else if text.starts_with("authentication error")
        || cause.as_deref() == Some("password missing")
    {
        ThreadStoreError::Authentication { message, source }
    } else if io_kind.is_some()
        || text.starts_with("connection closed")
        || text.starts_with("error connecting")
        || text.starts_with("error communicating")
    {
        ThreadStoreError::Unavailable { message, source }
    } else {
        ThreadStoreError::Backend { message, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_their_meaning() {
        let cases = [
            ("40001", Class::RolledBack),
            ("40P01", Class::RolledBack),
            ("57014", Class::Timeout),
            ("55P03", Class::Timeout),
            ("25P03", Class::Timeout),
            ("57P01", Class::Unavailable),
            ("57P02", Class::Unavailable),
            ("57P03", Class::Unavailable),
            ("08006", Class::Unavailable),
            ("08001", Class::Unavailable),
            ("53300", Class::Unavailable),
            ("25006", Class::Unavailable),
            ("40003", Class::Unavailable),
            ("28P01", Class::Authentication),
            ("28000", Class::Authentication),
            ("42501", Class::Authentication),
            ("23505", Class::Other),
            ("53100", Class::Other),
            ("3D000", Class::Other),
            ("42P01", Class::Other),
        ];
        for (code, class) in cases {
            assert_eq!(class_of(&SqlState::from_code(code)), class, "{code}");
        }
    }

    #[test]
    fn response_and_pool_timeouts_are_retryable_timeouts() {
        let elapsed = Failure::on("t1")(Fault::Elapsed(Duration::from_millis(5)));
        assert!(
            matches!(&elapsed, ThreadStoreError::Timeout { message, .. } if message.contains("'t1'")),
            "{elapsed:?}"
        );
        assert!(elapsed.is_retryable());
        let wait = Failure::general(Fault::Pool(PoolError::Timeout(TimeoutType::Wait)));
        assert!(matches!(wait, ThreadStoreError::Timeout { .. }), "{wait:?}");
        let closed = Failure::general(Fault::Pool(PoolError::Closed));
        assert!(
            matches!(closed, ThreadStoreError::Backend { .. }),
            "{closed:?}"
        );
        assert!(!closed.is_retryable());
    }
}
