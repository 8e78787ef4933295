//! One batch of writes: each task's changes decided on what the outbox
//! believes is stored, sent as one `create_batch` and one `append_batch`;
//! the tasks whose record is unknown, or whose write met a conflict, are
//! then written one by one with the compare-and-swap loop (concurrently).

use std::sync::Arc;

use futures::future::join_all;

use crate::records::{Change, Known, Prepared, VersionedRecord, decide, needs_reload};
use crate::{TaskError, TaskId, TaskStore};

/// One task's part of a batch: the changes of one of its epochs, in order,
/// and what the outbox believes is stored.
#[derive(Debug)]
pub(super) struct Pick {
    pub(super) task_id: TaskId,
    pub(super) owner: Arc<str>,
    pub(super) epoch: u64,
    pub(super) changes: Vec<Change>,
    /// The flush barrier's tag of each change.
    pub(super) tags: Vec<u64>,
    pub(super) known: Known,
}

/// The outcome of one task's write: the record as stored afterwards.
pub(super) type WriteResult = Result<VersionedRecord, TaskError>;

/// Writes a batch; one result per pick, in order.
pub(super) async fn write(store: &TaskStore, picks: &mut [Pick]) -> Vec<WriteResult> {
    let mut results: Vec<Option<WriteResult>> = Vec::with_capacity(picks.len());
    // What each batched write is for, and the writes.
    let mut creates = Vec::new();
    let mut threads = Vec::new();
    let mut appends = Vec::new();
    let mut requests = Vec::new();
    let mut alone = Vec::new();
    for (i, pick) in picks.iter_mut().enumerate() {
        results.push(None);
        let current = match std::mem::replace(&mut pick.known, Known::Unknown) {
            Known::Cached(record) => Some(*record),
            Known::Absent => None,
            Known::Unknown => {
                alone.push(i);
                continue;
            }
        };
        let prepared = decide(
            &pick.task_id,
            Some(&pick.owner),
            current.as_ref().map(|c| &c.record),
            &pick.changes,
        )
        .and_then(|plan| store.prepare(&pick.task_id, current.as_ref(), plan));
        match prepared {
            Err(e) => results[i] = Some(Err(e)),
            Ok(Prepared::Unchanged(record)) => results[i] = Some(Ok(record)),
            Ok(Prepared::Create { thread, record }) => {
                creates.push((i, record));
                threads.push(thread);
            }
            Ok(Prepared::Append { request, record }) => {
                appends.push((i, record));
                requests.push(request);
            }
        }
    }

    let backend = store.thread_store();
    let (created, appended) = futures::join!(
        async {
            if threads.is_empty() {
                Vec::new()
            } else {
                backend.create_batch(threads).await
            }
        },
        async {
            if requests.is_empty() {
                Vec::new()
            } else {
                backend.append_batch(requests).await
            }
        }
    );
    let written = creates
        .into_iter()
        .zip(created)
        .chain(appends.into_iter().zip(appended));
    for ((i, record), result) in written {
        match result {
            Ok(committed) => {
                results[i] = Some(Ok(VersionedRecord {
                    record,
                    version: committed.version,
                }));
            }
            // Not as believed: decide again on a fresh load.
            Err(e) if needs_reload(&e) => alone.push(i),
            Err(e) => results[i] = Some(Err(e.into())),
        }
    }

    let redone = join_all(alone.iter().map(|&i| {
        let pick = &picks[i];
        store.write(
            &pick.task_id,
            Some(&pick.owner),
            Known::Unknown,
            &pick.changes,
        )
    }))
    .await;
    for (i, result) in alone.into_iter().zip(redone) {
        results[i] = Some(result);
    }

    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(TaskError::Store(task_store::ThreadStoreError::backend(
                    "the store returned fewer results than writes in the batch",
                )))
            })
        })
        .collect()
}
