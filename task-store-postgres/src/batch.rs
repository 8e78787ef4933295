//! Building batched writes: the columns of one `create_batch` statement and
//! the groups of appends that one call of the append function takes.

use std::collections::HashMap;

use task_store::{
    AppendRequest, Committed, Result, Thread, ThreadStoreError, VersionPrecondition, validate_id,
    validate_messages,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::codec::{self, Outgoing, bigint, column, count, to_json};

/// At most this many threads go into one statement of `create_batch`, and
/// this many threads' appends into one call of the append function. A
/// batch of more becomes several statements, spread over up to one
/// connection per core and pipelined on each, so that the server works on
/// a large batch with all its cores (measured on 20,000 task finishes in
/// batches of up to 512: about a quarter more tasks per second than one
/// statement per batch).
pub(crate) const CHUNK: usize = 128;

/// The columns of one `create_batch` statement, and what each of its
/// items will have committed if it is created.
#[derive(Default)]
pub(crate) struct CreateChunk<'a> {
    /// Result index, thread id, and the write it commits when created.
    pub(crate) items: Vec<(usize, &'a str, Committed)>,
    pub(crate) ids: Vec<&'a str>,
    pub(crate) kinds: Vec<&'a str>,
    pub(crate) parents: Vec<Option<&'a str>>,
    pub(crate) metadata: Vec<String>,
    pub(crate) states: Vec<String>,
    pub(crate) terminals: Vec<bool>,
    pub(crate) last_seqs: Vec<i64>,
    pub(crate) first_ids: Vec<Option<String>>,
    pub(crate) first_logs: Vec<Option<String>>,
}

impl<'a> CreateChunk<'a> {
    pub(crate) fn push(&mut self, slot: usize, thread: &'a Thread) -> Result<()> {
        let id = thread.id.as_str();
        let messages = Outgoing::new(id, &thread.messages)?;
        let n = messages.len();
        self.metadata.push(to_json(id, &thread.metadata)?);
        self.states.push(to_json(id, &thread.state)?);
        self.items.push((
            slot,
            id,
            Committed {
                version: 1,
                last_seq: n,
                appended: n,
                skipped: messages.repeats,
            },
        ));
        self.ids.push(id);
        self.kinds.push(&thread.kind);
        self.parents.push(thread.parent_id.as_deref());
        self.terminals.push(thread.terminal);
        self.last_seqs.push(bigint(n));
        let (first_ids, first_log) = codec::first_entries(&messages);
        self.first_ids.push(first_ids);
        self.first_logs.push(first_log);
        Ok(())
    }

    pub(crate) fn params<'p>(&'p self, retention_ms: &'p i64) -> Vec<&'p (dyn ToSql + Sync)> {
        vec![
            &self.ids,
            &self.kinds,
            &self.parents,
            &self.metadata,
            &self.states,
            &self.terminals,
            &self.last_seqs,
            retention_ms,
            &self.first_ids,
            &self.first_logs,
        ]
    }
}

/// One append of an `append_batch` call, checked, with its new state
/// encoded.
pub(crate) struct AppendItem {
    pub(crate) slot: usize,
    pub(crate) request: AppendRequest,
    pub(crate) state: Option<String>,
}

impl AppendItem {
    pub(crate) fn new(slot: usize, request: AppendRequest) -> Result<Self> {
        validate_id("thread id", &request.id)?;
        validate_messages(&request.changes.messages)?;
        let state = request
            .changes
            .state
            .as_ref()
            .map(|s| to_json(&request.id, s))
            .transpose()?;
        Ok(Self {
            slot,
            request,
            state,
        })
    }

    pub(crate) fn expected(&self) -> Option<u64> {
        match self.request.precondition {
            VersionPrecondition::Exact(v) => Some(v),
            VersionPrecondition::Any => None,
        }
    }

    /// The result of this append from its row of the function's answer;
    /// `sent` and `repeats` count its messages that went to the function
    /// and those dropped before as repeats within the change set.
    pub(crate) fn settle(&self, row: &Row, sent: u64, repeats: u64) -> Result<Committed> {
        let id = self.request.id.as_str();
        let outcome: String = column(id, row, 0)?;
        match outcome.as_str() {
            "n" => Err(ThreadStoreError::NotFound { id: id.to_owned() }),
            "c" => Err(ThreadStoreError::VersionConflict {
                id: id.to_owned(),
                expected: self.expected().unwrap_or_default(),
                actual: count(id, "version", column(id, row, 1)?)?,
            }),
            "o" => {
                let appended = count(id, "appended count", column(id, row, 3)?)?;
                Ok(Committed {
                    version: count(id, "version", column(id, row, 1)?)?,
                    last_seq: count(id, "last sequence number", column(id, row, 2)?)?,
                    appended,
                    skipped: repeats + sent.saturating_sub(appended),
                })
            }
            other => Err(ThreadStoreError::backend(format!(
                "the append function answered {other:?} for thread '{id}'"
            ))),
        }
    }
}

/// The arrays of one call of the append function, and the appends they
/// hold (an append whose messages cannot be encoded is left out, with its
/// error).
#[derive(Default)]
pub(crate) struct AppendColumns<'a> {
    /// The appends sent, with their messages sent and dropped as repeats.
    pub(crate) items: Vec<(&'a AppendItem, u64, u64)>,
    /// The appends left out, with why.
    pub(crate) refused: Vec<(usize, ThreadStoreError)>,
    pub(crate) ids: Vec<&'a str>,
    pub(crate) expected: Vec<Option<i64>>,
    pub(crate) states: Vec<Option<&'a str>>,
    pub(crate) terminals: Vec<Option<bool>>,
    pub(crate) counts: Vec<i32>,
    pub(crate) message_ids: Vec<Option<&'a str>>,
    pub(crate) message_bodies: Vec<String>,
}

impl<'a> AppendColumns<'a> {
    pub(crate) fn new(items: &[&'a AppendItem]) -> Self {
        let mut columns = Self::default();
        for item in items {
            let id = item.request.id.as_str();
            let messages = match Outgoing::new(id, &item.request.changes.messages) {
                Ok(messages) => messages,
                Err(err) => {
                    columns.refused.push((item.slot, err));
                    continue;
                }
            };
            columns.items.push((item, messages.len(), messages.repeats));
            columns.ids.push(id);
            columns.expected.push(item.expected().map(bigint));
            columns.states.push(item.state.as_deref());
            columns.terminals.push(item.request.changes.terminal);
            columns
                .counts
                .push(i32::try_from(messages.bodies.len()).unwrap_or(i32::MAX));
            columns.message_ids.extend(messages.ids);
            columns.message_bodies.extend(messages.bodies);
        }
        columns
    }

    pub(crate) fn params<'p>(&'p self, retention_ms: &'p i64) -> Vec<&'p (dyn ToSql + Sync)> {
        vec![
            &self.ids,
            &self.expected,
            &self.states,
            &self.terminals,
            &self.counts,
            &self.message_ids,
            &self.message_bodies,
            retention_ms,
        ]
    }
}

/// Groups appends into calls of at most [`CHUNK`] threads, every append of
/// a thread in the call of its first one and in order, so that calls touch
/// disjoint threads and may run in any order.
pub(crate) fn group_by_thread(items: &[AppendItem]) -> Vec<Vec<&AppendItem>> {
    let mut groups: Vec<Vec<&AppendItem>> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    let mut threads_in_last = 0;
    for item in items {
        if let Some(&group) = group_of.get(item.request.id.as_str()) {
            groups[group].push(item);
            continue;
        }
        if groups.is_empty() || threads_in_last == CHUNK {
            groups.push(Vec::new());
            threads_in_last = 0;
        }
        let last = groups.len() - 1;
        groups[last].push(item);
        group_of.insert(&item.request.id, last);
        threads_in_last += 1;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use task_store::ChangeSet;

    fn item(id: &str) -> AppendItem {
        AppendItem::new(
            0,
            AppendRequest {
                id: id.to_owned(),
                changes: ChangeSet::default(),
                precondition: VersionPrecondition::Any,
            },
        )
        .expect("valid")
    }

    #[test]
    fn a_threads_appends_share_the_group_of_its_first_in_order() {
        let mut items: Vec<AppendItem> = (0..CHUNK + 1).map(|i| item(&format!("t{i}"))).collect();
        items.push(item("t0"));
        items.push(item(&format!("t{CHUNK}")));
        let groups = group_by_thread(&items);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), CHUNK + 1, "t0's second append joins it");
        assert_eq!(groups[0].last().map(|i| i.request.id.as_str()), Some("t0"));
        let second: Vec<&str> = groups[1].iter().map(|i| i.request.id.as_str()).collect();
        assert_eq!(second, [format!("t{CHUNK}"), format!("t{CHUNK}")]);
    }
}
