//! How data is stored: messages as JSON, heads as hash fields, and the
//! arguments the scripts take for them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use task_store::{
    Message, Metadata, NewMessage, Result, ThreadHead, ThreadStoreError, VersionPrecondition,
};

/// A message as stored in the log.
#[derive(Serialize)]
struct StoredMessageRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    body: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct StoredMessage {
    #[serde(default)]
    id: Option<String>,
    body: serde_json::Value,
}

/// Decodes message `seq` of thread `id` from its stored JSON.
pub(crate) fn decode_message(id: &str, seq: u64, bytes: &[u8]) -> Result<Message> {
    let stored: StoredMessage = serde_json::from_slice(bytes).map_err(|err| {
        ThreadStoreError::corrupt(id, format!("message {seq} is not valid JSON: {err}"))
    })?;
    Ok(Message {
        seq,
        id: stored.id,
        body: stored.body,
    })
}

/// The JSON text of a value of thread `id`.
pub(crate) fn to_json<T: Serialize + ?Sized>(id: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| {
        ThreadStoreError::invalid_input(format!(
            "the data of thread '{id}' cannot be encoded as JSON: {err}"
        ))
    })
}

/// The messages of one write as the scripts take them: id (empty for
/// none) and stored JSON, pair by pair, in order, with ids repeated within
/// the write left out; and how many were left out.
pub(crate) fn encode_messages(
    thread: &str,
    messages: &[NewMessage],
) -> Result<(Vec<Vec<u8>>, u64)> {
    let mut seen = HashSet::new();
    let mut encoded = Vec::with_capacity(2 * messages.len());
    let mut repeats = 0u64;
    for message in messages {
        let mid = message.id.as_deref();
        if let Some(mid) = mid
            && !seen.insert(mid)
        {
            repeats += 1;
            continue;
        }
        let stored = StoredMessageRef {
            id: mid,
            body: &message.body,
        };
        encoded.push(mid.unwrap_or_default().as_bytes().to_vec());
        encoded.push(to_json(thread, &stored)?.into_bytes());
    }
    Ok((encoded, repeats))
}

/// The finished-mark argument: `''` to leave it, `'0'` to clear, `'1'` to set.
pub(crate) fn terminal_arg(terminal: Option<bool>) -> &'static str {
    match terminal {
        None => "",
        Some(false) => "0",
        Some(true) => "1",
    }
}

/// The expected-version argument: the version, or `''` for any.
pub(crate) fn expected_arg(precondition: VersionPrecondition) -> String {
    match precondition {
        VersionPrecondition::Exact(v) => v.to_string(),
        VersionPrecondition::Any => String::new(),
    }
}

/// The fields of a head, in the order [`parse_head`] reads them.
pub(crate) const HEAD_FIELDS: [&str; 7] = ["kind", "parent", "meta", "state", "v", "seq", "term"];

/// Decodes a head from `HMGET` of [`HEAD_FIELDS`].
pub(crate) fn parse_head(id: &str, values: Vec<Option<Vec<u8>>>) -> Result<Option<ThreadHead>> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut fields = values.into_iter();
    let mut next = || fields.next().flatten();
    let (kind, parent, meta, state, version, seq, term) =
        (next(), next(), next(), next(), next(), next(), next());
    let text = |field: &str, bytes: Option<Vec<u8>>| -> Result<String> {
        let bytes = bytes.ok_or_else(|| {
            ThreadStoreError::corrupt(id, format!("the head has no field '{field}'"))
        })?;
        String::from_utf8(bytes).map_err(|_| {
            ThreadStoreError::corrupt(id, format!("the head field '{field}' is not UTF-8"))
        })
    };
    let number = |field: &str, bytes: Option<Vec<u8>>| -> Result<u64> {
        text(field, bytes)?.parse().map_err(|_| {
            ThreadStoreError::corrupt(id, format!("the head field '{field}' is not a number"))
        })
    };
    let kind = text("kind", kind)?;
    let parent_id = parent.map(|p| text("parent", Some(p))).transpose()?;
    let metadata: Metadata = serde_json::from_str(&text("meta", meta)?).map_err(|err| {
        ThreadStoreError::corrupt(id, format!("the metadata is not a JSON object: {err}"))
    })?;
    let state = serde_json::from_str(&text("state", state)?).map_err(|err| {
        ThreadStoreError::corrupt(id, format!("the state is not valid JSON: {err}"))
    })?;
    let version = number("v", version)?;
    let last_seq = number("seq", seq)?;
    let terminal = match text("term", term)?.as_str() {
        "0" => false,
        "1" => true,
        other => {
            return Err(ThreadStoreError::corrupt(
                id,
                format!("the finished mark is {other:?}, not 0 or 1"),
            ));
        }
    };
    Ok(Some(ThreadHead {
        id: id.to_owned(),
        kind,
        parent_id,
        metadata,
        state,
        version,
        last_seq,
        terminal,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_with_garbage_is_corrupt() {
        let some = |s: &str| Some(s.as_bytes().to_vec());
        let good = vec![
            some("task"),
            None,
            some("{}"),
            some("{\"a\":1}"),
            some("3"),
            some("2"),
            some("1"),
        ];
        let head = parse_head("t", good.clone())
            .expect("decodes")
            .expect("present");
        assert_eq!((head.version, head.last_seq, head.terminal), (3, 2, true));
        assert_eq!(parse_head("t", vec![None; 7]).expect("absent"), None);

        let mut bad_state = good.clone();
        bad_state[3] = some("{not json");
        let mut no_version = good.clone();
        no_version[4] = None;
        let mut bad_meta = good;
        bad_meta[2] = some("[1]");
        for bad in [bad_state, no_version, bad_meta] {
            let err = parse_head("t", bad).expect_err("corrupt");
            assert!(
                matches!(&err, ThreadStoreError::Corrupt { id, .. } if id == "t"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn repeated_message_ids_within_a_write_are_left_out_and_counted() {
        let messages = [
            NewMessage::with_id("a", serde_json::json!(1)),
            NewMessage::new(serde_json::json!(2)),
            NewMessage::with_id("a", serde_json::json!(3)),
        ];
        let (encoded, repeats) = encode_messages("t", &messages).expect("encodes");
        assert_eq!(repeats, 1);
        assert_eq!(encoded.len(), 4);
        assert_eq!(encoded[0], b"a");
        assert_eq!(encoded[2], b"");
    }
}
