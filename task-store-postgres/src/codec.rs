//! What goes into the statements and what comes out of the rows: JSON as
//! exact text, message lists without repeated ids, and rows decoded into
//! the contract's types, where a malformed row is `Corrupt` for its thread.

use serde::Serialize;
use serde_json::Value;
use task_store::{Message, Metadata, NewMessage, Result, ThreadHead, ThreadStoreError};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

/// `value` as compact JSON text, stored as it is (in a `json` column),
/// so that it reads back equal.
pub(crate) fn to_json<T: Serialize + ?Sized>(id: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| {
        ThreadStoreError::invalid_input(format!(
            "thread '{id}': a value cannot be written as JSON: {err}"
        ))
    })
}

/// The messages of one write as the statements take them: repeated ids
/// within the list dropped (the first one stays), bodies as JSON text.
#[derive(Debug, Default)]
pub(crate) struct Outgoing<'a> {
    /// Each message's id, if it has one.
    pub(crate) ids: Vec<Option<&'a str>>,
    /// Each message's body.
    pub(crate) bodies: Vec<String>,
    /// How many were dropped as repeats within the list.
    pub(crate) repeats: u64,
}

impl<'a> Outgoing<'a> {
    /// Encodes `messages` of thread `thread`.
    pub(crate) fn new(thread: &str, messages: &'a [NewMessage]) -> Result<Self> {
        let mut out = Self::default();
        let mut seen = std::collections::HashSet::new();
        for message in messages {
            let id = message.id.as_deref();
            if let Some(id) = id
                && !seen.insert(id)
            {
                out.repeats += 1;
                continue;
            }
            out.bodies.push(to_json(thread, &message.body)?);
            out.ids.push(id);
        }
        Ok(out)
    }

    /// How many messages go to the statement.
    pub(crate) fn len(&self) -> u64 {
        self.bodies.len() as u64
    }
}

/// A created thread's messages as its first log entries are kept in its
/// row: the ids joined by newlines (ids hold no control characters; an
/// empty line for a message without one) and the bodies as one JSON array,
/// exactly as written. Both `None` when there are no messages.
pub(crate) fn first_entries(messages: &Outgoing<'_>) -> (Option<String>, Option<String>) {
    if messages.bodies.is_empty() {
        return (None, None);
    }
    let ids: Vec<&str> = messages.ids.iter().map(|id| id.unwrap_or("")).collect();
    (
        Some(ids.join("\n")),
        Some(format!("[{}]", messages.bodies.join(","))),
    )
}

/// The first log entries of a thread (see [`first_entries`]) with
/// sequence numbers after `after`, at most `limit` of them. The statement
/// leaves `ids` and `log` out (`None`) once the cursor is past them.
pub(crate) fn first_page(
    id: &str,
    first_count: u64,
    ids: Option<String>,
    log: Option<String>,
    after: u64,
    limit: usize,
) -> Result<Vec<Message>> {
    if after >= first_count {
        return Ok(Vec::new());
    }
    let (Some(ids), Some(log)) = (ids, log) else {
        return Err(ThreadStoreError::corrupt(
            id,
            format!("it records {first_count} first log entries but holds none"),
        ));
    };
    let bodies: Vec<Value> = serde_json::from_str(&log).map_err(|err| {
        ThreadStoreError::corrupt(
            id,
            format!("its first log entries are not a JSON array: {err}"),
        )
    })?;
    let ids: Vec<&str> = ids.split('\n').collect();
    if ids.len() as u64 != first_count || bodies.len() as u64 != first_count {
        return Err(ThreadStoreError::corrupt(
            id,
            format!(
                "it records {first_count} first log entries but holds {} ids and {} bodies",
                ids.len(),
                bodies.len()
            ),
        ));
    }
    Ok((1..)
        .zip(ids.into_iter().zip(bodies))
        .skip(usize::try_from(after).unwrap_or(usize::MAX))
        .take(limit)
        .map(|(seq, (message_id, body))| Message {
            seq,
            id: (!message_id.is_empty()).then(|| message_id.to_owned()),
            body,
        })
        .collect())
}

/// A column of `row`, or `Corrupt` for thread `id` when it cannot be read
/// as a `T` (a `NULL` where none belongs, say).
pub(crate) fn column<'r, T: FromSql<'r>>(id: &str, row: &'r Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(|err| {
        ThreadStoreError::corrupt(
            id,
            format!(
                "column {} of its row cannot be read: {err}",
                row.columns()
                    .get(index)
                    .map_or("?", tokio_postgres::Column::name)
            ),
        )
    })
}

/// A stored count (a version, a sequence number) as `u64`.
pub(crate) fn count(id: &str, what: &str, value: i64) -> Result<u64> {
    u64::try_from(value)
        .map_err(|_| ThreadStoreError::corrupt(id, format!("its {what} is negative ({value})")))
}

/// A `u64` from the contract as the `bigint` the tables hold. Versions and
/// sequence numbers never reach `i64::MAX`; a larger value saturates, and
/// then matches no stored one.
pub(crate) fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn parse(id: &str, what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|err| ThreadStoreError::corrupt(id, format!("its {what} is not JSON: {err}")))
}

/// Decodes a head row: `kind, parent_id, metadata, state, version,
/// last_seq, terminal` (the JSON columns as text).
pub(crate) fn head(id: &str, row: &Row) -> Result<ThreadHead> {
    let metadata = match parse(id, "metadata", column(id, row, 2)?)? {
        Value::Object(map) => map,
        other => {
            return Err(ThreadStoreError::corrupt(
                id,
                format!("its metadata is not a JSON object: {other}"),
            ));
        }
    };
    Ok(ThreadHead {
        id: id.to_owned(),
        kind: column(id, row, 0)?,
        parent_id: column(id, row, 1)?,
        metadata: Metadata::from(metadata),
        state: parse(id, "state", column(id, row, 3)?)?,
        version: count(id, "version", column(id, row, 4)?)?,
        last_seq: count(id, "last sequence number", column(id, row, 5)?)?,
        terminal: column(id, row, 6)?,
    })
}

/// Decodes a message from the columns `seq, message_id, body` of `row`,
/// starting at column `first`.
pub(crate) fn message(id: &str, row: &Row, first: usize) -> Result<Message> {
    Ok(Message {
        seq: count(id, "message sequence number", column(id, row, first)?)?,
        id: column(id, row, first + 1)?,
        body: parse(id, "message body", column(id, row, first + 2)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeated_message_ids_within_a_list_keep_the_first() {
        let messages = [
            NewMessage::with_id("a", json!(1)),
            NewMessage::new(json!(2)),
            NewMessage::with_id("a", json!(3)),
            NewMessage::new(json!(4)),
        ];
        let out = Outgoing::new("t", &messages).expect("encodes");
        assert_eq!(out.bodies, ["1", "2", "4"]);
        assert_eq!(out.ids, [Some("a"), None, None]);
        assert_eq!((out.len(), out.repeats), (3, 1));
    }

    #[test]
    fn first_entries_round_trip_and_page_from_a_cursor() {
        let messages = [
            NewMessage::with_id("a", json!({ "n": 1 })),
            NewMessage::new(json!([1, 2])),
            NewMessage::with_id("c", json!("three")),
        ];
        let out = Outgoing::new("t", &messages).expect("encodes");
        let (ids, log) = first_entries(&out);
        assert_eq!(ids.as_deref(), Some("a\n\nc"));
        assert_eq!(log.as_deref(), Some(r#"[{"n":1},[1,2],"three"]"#));
        let page = first_page("t", 3, ids.clone(), log.clone(), 1, 10).expect("decodes");
        assert_eq!(
            page,
            [
                Message {
                    seq: 2,
                    id: None,
                    body: json!([1, 2])
                },
                Message {
                    seq: 3,
                    id: Some("c".into()),
                    body: json!("three")
                },
            ]
        );
        let page = first_page("t", 3, ids.clone(), log.clone(), 0, 1).expect("decodes");
        assert_eq!(page.len(), 1);
        assert_eq!(first_entries(&Outgoing::default()), (None, None));
        let err = first_page("t", 4, ids, log, 0, 10).expect_err("count mismatch");
        assert!(matches!(err, ThreadStoreError::Corrupt { .. }), "{err:?}");
        let err = first_page("t", 1, Some("a".into()), Some("[oops".into()), 0, 10)
            .expect_err("not JSON");
        assert!(matches!(err, ThreadStoreError::Corrupt { .. }), "{err:?}");
        let err = first_page("t", 2, None, None, 0, 10).expect_err("entries missing");
        assert!(matches!(err, ThreadStoreError::Corrupt { .. }), "{err:?}");
        assert!(
            first_page("t", 2, None, None, 2, 10)
                .expect("past them")
                .is_empty()
        );
    }

    #[test]
    fn counts_refuse_negative_values_and_bigints_saturate() {
        assert_eq!(count("t", "version", 3).expect("positive"), 3);
        let err = count("t", "version", -1).expect_err("negative");
        assert!(
            matches!(&err, ThreadStoreError::Corrupt { id, .. } if id == "t"),
            "{err:?}"
        );
        assert_eq!(bigint(u64::MAX), i64::MAX);
        assert_eq!(bigint(7), 7);
    }
}
