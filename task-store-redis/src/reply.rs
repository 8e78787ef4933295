//! The one place where the scripts' replies are decoded and become results
//! or [`ThreadStoreError`]s. (Errors of Redis itself are mapped in
//! [`error`](crate::error).)

use redis::Value;
use task_store::{Committed, Result, ThreadStoreError, VersionPrecondition};

/// What a write script answered for one thread.
pub(crate) enum WriteReply {
    Ok(Committed),
    NotFound,
    Exists,
    Conflict(u64),
    Corrupt(String),
    BadIndex(String),
}

impl WriteReply {
    /// Decodes one reply of the append and save scripts.
    pub(crate) fn parse(id: &str, reply: Value) -> Result<Self> {
        let mut items = items(id, reply)?.into_iter();
        Ok(match status(id, items.next())?.as_str() {
            "ok" => Self::Ok(Committed {
                version: int(id, items.next())?,
                last_seq: int(id, items.next())?,
                appended: int(id, items.next())?,
                skipped: int(id, items.next())?,
            }),
            "notfound" => Self::NotFound,
            "exists" => Self::Exists,
            "conflict" => Self::Conflict(int(id, items.next())?),
            "corrupt" => Self::Corrupt(
                opt_string(id, items.next())?.unwrap_or_else(|| "unreadable record".to_owned()),
            ),
            "badindex" => Self::BadIndex(opt_string(id, items.next())?.unwrap_or_default()),
            other => return Err(unexpected(id, other)),
        })
    }

    /// The write's result: what it committed, or the error its reply means.
    /// `precondition` is the one the write was made with (for a conflict's
    /// expected version).
    pub(crate) fn into_result(
        self,
        id: &str,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        match self {
            Self::Ok(committed) => Ok(committed),
            Self::Conflict(actual) => Err(ThreadStoreError::VersionConflict {
                id: id.to_owned(),
                expected: match precondition {
                    VersionPrecondition::Exact(v) => v,
                    VersionPrecondition::Any => 0,
                },
                actual,
            }),
            Self::NotFound => Err(ThreadStoreError::NotFound { id: id.to_owned() }),
            Self::Exists => Err(ThreadStoreError::AlreadyExists { id: id.to_owned() }),
            Self::Corrupt(reason) => Err(ThreadStoreError::corrupt(id, reason)),
            Self::BadIndex(key) => Err(bad_index(&key)),
        }
    }
}

/// The error for an index key (or the expiry set) of the wrong type.
pub(crate) fn bad_index(key: &str) -> ThreadStoreError {
    ThreadStoreError::backend(format!(
        "the index key {key} is not a sorted set; nothing was written"
    ))
}

/// What the batch create script answered for one thread.
pub(crate) enum CreateStatus {
    Created,
    Taken,
    /// This key (an index key of the thread, or the expiry set) is not a
    /// sorted set; nothing was written for the thread.
    BadKey(String),
}

impl CreateStatus {
    /// The thread's result, given what its creation commits.
    pub(crate) fn into_result(self, id: &str, committed: Committed) -> Result<Committed> {
        match self {
            Self::Created => Ok(committed),
            Self::Taken => Err(ThreadStoreError::AlreadyExists { id: id.to_owned() }),
            Self::BadKey(key) => Err(bad_index(&key)),
        }
    }

    /// Decodes the batch create script's answer for a run of `n` threads.
    pub(crate) fn parse_run(reply: Value, n: usize) -> Result<Vec<Self>> {
        run_items("create", reply, n)?
            .into_iter()
            .map(|item| match item {
                Value::Int(1) => Ok(Self::Created),
                Value::Int(0) => Ok(Self::Taken),
                Value::BulkString(key) => {
                    Ok(Self::BadKey(String::from_utf8_lossy(&key).into_owned()))
                }
                other => Err(odd_run("create", &format!("{other:?}"))),
            })
            .collect()
    }
}

/// Splits a batch script's answer for a run of `n` items into their
/// replies; `what` names the script for the error.
pub(crate) fn run_items(what: &str, reply: Value, n: usize) -> Result<Vec<Value>> {
    match reply {
        Value::Array(items) if items.len() == n => Ok(items),
        Value::Array(items) => Err(odd_run(
            what,
            &format!("{} replies for {n} items", items.len()),
        )),
        other => Err(odd_run(what, &format!("{other:?}"))),
    }
}

fn odd_run(what: &str, detail: &str) -> ThreadStoreError {
    ThreadStoreError::backend(format!(
        "unexpected answer from the batch {what} script: {detail}"
    ))
}

/// The items of a script's reply, which must be an array.
pub(crate) fn items(id: &str, reply: Value) -> Result<Vec<Value>> {
    match reply {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(id, &format!("{other:?}"))),
    }
}

/// The status word that opens a reply.
pub(crate) fn status(id: &str, item: Option<Value>) -> Result<String> {
    opt_string(id, item)?.ok_or_else(|| unexpected(id, "an empty reply"))
}

/// A string of a script's reply; `None` for an empty string or nil.
pub(crate) fn opt_string(id: &str, item: Option<Value>) -> Result<Option<String>> {
    match item {
        Some(Value::BulkString(bytes)) if bytes.is_empty() => Ok(None),
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| unexpected(id, "a reply that is not UTF-8")),
        Some(Value::SimpleString(s)) if s.is_empty() => Ok(None),
        Some(Value::SimpleString(s)) => Ok(Some(s)),
        None | Some(Value::Nil) => Ok(None),
        Some(other) => Err(unexpected(id, &format!("{other:?}"))),
    }
}

/// A number of a script's reply.
pub(crate) fn int(id: &str, item: Option<Value>) -> Result<u64> {
    match item {
        Some(Value::Int(n)) => u64::try_from(n).map_err(|_| unexpected(id, "a negative number")),
        other => Err(unexpected(id, &format!("{other:?} where a number was due"))),
    }
}

/// The `Corrupt` error of a `{'corrupt', reason}` reply.
pub(crate) fn corrupt_reason(id: &str, item: Option<Value>) -> ThreadStoreError {
    let reason = opt_string(id, item)
        .ok()
        .flatten()
        .unwrap_or_else(|| "unreadable record".to_owned());
    ThreadStoreError::corrupt(id, reason)
}

/// A reply no script gives, which would be a bug.
pub(crate) fn unexpected(id: &str, what: &str) -> ThreadStoreError {
    ThreadStoreError::backend(format!(
        "unexpected answer from a script on thread '{id}': {what}"
    ))
}
