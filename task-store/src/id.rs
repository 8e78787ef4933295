//! Id validation, in one place for every backend.

use crate::ThreadStoreError;

/// The longest id accepted, in bytes (UTF-8).
pub const MAX_ID_LEN: usize = 256;

/// Checks an id (of a thread, a parent, a kind or a message) before it is used.
///
/// An id is accepted when it is non-empty, at most [`MAX_ID_LEN`] bytes long
/// and holds no control characters (Unicode category Cc: `\0`, `\n`, `\t`,
/// DEL...). Anything else is printable and allowed, including `:`, `/`, spaces
/// and non-ASCII letters; backends that give some characters a meaning (braces
/// in a Redis hash tag, say) encode them, they do not refuse them.
///
/// `what` names the id in the error ("thread id", "owner"...).
///
/// # Errors
///
/// [`ThreadStoreError::InvalidInput`] saying which rule the id breaks.
///
/// ```
/// use task_store::validate_id;
/// assert!(validate_id("thread id", "task:01J9").is_ok());
/// assert!(validate_id("thread id", "").is_err());
/// assert!(validate_id("thread id", "a\nb").is_err());
/// ```
pub fn validate_id(what: &str, id: &str) -> Result<(), ThreadStoreError> {
    if id.is_empty() {
        return Err(ThreadStoreError::invalid_input(format!(
            "{what} must not be empty"
        )));
    }
    if id.len() > MAX_ID_LEN {
        return Err(ThreadStoreError::invalid_input(format!(
            "{what} is {} bytes long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    // Printable ASCII, by far the common case, needs no decoding.
    if id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(ThreadStoreError::invalid_input(format!(
            "{what} {:?} contains the control character {:?}",
            truncate(id),
            c
        )));
    }
    Ok(())
}

fn truncate(id: &str) -> &str {
    match id.char_indices().nth(64) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Checks every id of a [`Thread`](crate::Thread) before a write: its id, kind,
/// parent and message ids. Backends call this first so that a bad write
/// changes nothing.
///
/// # Errors
///
/// [`ThreadStoreError::InvalidInput`] for the first id that breaks a rule of
/// [`validate_id`].
pub fn validate_thread(thread: &crate::Thread) -> Result<(), ThreadStoreError> {
    validate_id("thread id", &thread.id)?;
    validate_id("thread kind", &thread.kind)?;
    if let Some(parent) = &thread.parent_id {
        validate_id("parent id", parent)?;
    }
    validate_messages(&thread.messages)
}

/// Checks the message ids of a change set (see [`validate_thread`]).
///
/// # Errors
///
/// [`ThreadStoreError::InvalidInput`] for the first bad message id.
pub fn validate_messages(messages: &[crate::NewMessage]) -> Result<(), ThreadStoreError> {
    messages
        .iter()
        .filter_map(|m| m.id.as_deref())
        .try_for_each(|id| validate_id("message id", id))
}

/// Checks the ids of a listing query.
///
/// # Errors
///
/// [`ThreadStoreError::InvalidInput`] for the first bad id.
pub fn validate_query(query: &crate::ThreadQuery) -> Result<(), ThreadStoreError> {
    if let Some(parent) = &query.parent_id {
        validate_id("parent id", parent)?;
    }
    if let Some(kind) = &query.kind {
        validate_id("thread kind", kind)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_printable_ids_up_to_the_limit() {
        assert!(validate_id("id", "a").is_ok());
        assert!(validate_id("id", &"x".repeat(MAX_ID_LEN)).is_ok());
        assert!(validate_id("id", "task:{weird}*?[] ünïcode").is_ok());
    }

    #[test]
    fn refuses_empty_long_and_control_ids() {
        // C0, DEL and C1 (U+0085, which is not ASCII) controls.
        for bad in [
            "",
            "a\0b",
            "tab\there",
            "line\n",
            "\u{7f}",
            "nel\u{85}",
            "ü\u{9f}",
        ] {
            let err = validate_id("thread id", bad).expect_err("must be refused");
            assert!(
                matches!(err, ThreadStoreError::InvalidInput { .. }),
                "{err:?}"
            );
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        let err = validate_id("owner", &long).expect_err("too long");
        assert!(err.to_string().contains("owner is 257 bytes"), "{err}");
    }
}
