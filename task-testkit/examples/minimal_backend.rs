//! A worked minimal backend: the storage contract of `task-store` on an
//! ordered key-value map, the way a backend on a key-value server or an
//! embedded database is built, and the two suites it passes with one call
//! each (see `docs/backend-guide.md`, which walks through it rule by rule).
//!
//! ```text
//! cargo run -p task-testkit --example minimal_backend    # both suites, as reports
//! cargo test -p task-testkit --example minimal_backend   # both suites, as tests
//! ```
//!
//! The "database" is one `BTreeMap<String, Vec<u8>>` behind one lock: each
//! write takes the lock once, checks everything, then writes, so it is
//! atomic the way one transaction (or one Lua script) would be. Records are
//! JSON bytes, decoded on every read, so a record that cannot be decoded is
//! reported as `Corrupt` for that thread alone. Keys:
//!
//! | key | value |
//! |---|---|
//! | `t/<id>` | the head: kind, parent, metadata, state, version, last_seq, finished mark |
//! | `m/<id>\0<seq, 20 digits>` | one message: its id and body |
//! | `i/<id>\0<message id>` | the message ids of a thread, for de-duplication |
//! | `p/<parent>\0<id>`, `k/<kind>\0<id>` | the parent and kind indexes |
//! | `P/<parent>\0<id>`, `K/<kind>\0<id>`, `o/<id>` | the same, open threads only |
//!
//! The separator `\0` is a control character, which no valid id holds: with
//! a printable one (`:`), the children of parent `p:` would be listed under
//! `p` (the suite's prefix cases catch that).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde_json::{Value, json};
use task_store::{
    AppendRequest, ChangeSet, Committed, Message, MessagePage, MessageQuery, Metadata, NewMessage,
    Result, Thread, ThreadHead, ThreadPage, ThreadQuery, ThreadReader, ThreadSignals,
    ThreadStoreError, ThreadWriter, VersionPrecondition, effective_limit, validate_id,
    validate_messages, validate_query, validate_thread,
};

/// The storage contract on an ordered key-value map. Clones would share
/// nothing: make one and share it as `Arc<dyn ThreadStore>`.
#[derive(Debug, Default)]
pub struct MinimalStore {
    kv: Mutex<Kv>,
}

/// The key-value map, with the writes of the contract as its methods. Every
/// method runs under the store's one lock, so each is atomic.
#[derive(Debug, Default)]
struct Kv(BTreeMap<String, Vec<u8>>);

/// A thread's head as stored under `t/<id>`.
#[derive(Debug, Clone)]
struct Head {
    kind: String,
    parent: Option<String>,
    metadata: Metadata,
    state: Value,
    version: u64,
    last_seq: u64,
    terminal: bool,
}

impl Head {
    fn encode(&self) -> Vec<u8> {
        json!({
            "kind": self.kind,
            "parent": self.parent,
            "metadata": self.metadata,
            "state": self.state,
            "version": self.version,
            "last_seq": self.last_seq,
            "terminal": self.terminal,
        })
        .to_string()
        .into_bytes()
    }

    /// Decodes a stored head: anything unexpected is `Corrupt`, for this
    /// thread only.
    fn decode(id: &str, bytes: &[u8]) -> Result<Self> {
        let corrupt = |why: &str| ThreadStoreError::corrupt(id, why);
        let value: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(&e.to_string()))?;
        let text = |field: &str| value[field].as_str().map(str::to_owned);
        let number = |field: &str| value[field].as_u64();
        Ok(Self {
            kind: text("kind").ok_or_else(|| corrupt("no kind"))?,
            parent: text("parent"),
            metadata: value["metadata"]
                .as_object()
                .cloned()
                .ok_or_else(|| corrupt("no metadata"))?,
            state: value["state"].clone(),
            version: number("version").ok_or_else(|| corrupt("no version"))?,
            last_seq: number("last_seq").ok_or_else(|| corrupt("no last_seq"))?,
            terminal: value["terminal"]
                .as_bool()
                .ok_or_else(|| corrupt("no finished mark"))?,
        })
    }

    fn committed(&self, appended: u64, skipped: u64) -> Committed {
        Committed {
            version: self.version,
            last_seq: self.last_seq,
            appended,
            skipped,
        }
    }
}

/// The index keys of a thread: by parent and kind always, and the open
/// copies while it is not finished.
fn index_keys(id: &str, head: &Head) -> Vec<String> {
    let mut keys = vec![format!("k/{}\0{id}", head.kind)];
    if let Some(parent) = &head.parent {
        keys.push(format!("p/{parent}\0{id}"));
    }
    if !head.terminal {
        keys.push(format!("K/{}\0{id}", head.kind));
        keys.push(format!("o/{id}"));
        if let Some(parent) = &head.parent {
            keys.push(format!("P/{parent}\0{id}"));
        }
    }
    keys
}

impl Kv {
    fn head(&self, id: &str) -> Result<Option<Head>> {
        self.0
            .get(&format!("t/{id}"))
            .map(|bytes| Head::decode(id, bytes))
            .transpose()
    }

    /// Writes a head and moves its index entries from `old` to the new one,
    /// in the same step.
    fn put_head(&mut self, id: &str, old: Option<&Head>, head: &Head) {
        for key in old.map(|old| index_keys(id, old)).unwrap_or_default() {
            self.0.remove(&key);
        }
        for key in index_keys(id, head) {
            self.0.insert(key, Vec::new());
        }
        self.0.insert(format!("t/{id}"), head.encode());
    }

    /// Appends the messages whose ids are not in the thread's log (nor
    /// earlier in `messages`): the whole log's ids, never a window of them.
    fn append_messages(
        &mut self,
        id: &str,
        head: &mut Head,
        messages: Vec<NewMessage>,
    ) -> (u64, u64) {
        let (mut appended, mut skipped) = (0, 0);
        for message in messages {
            if let Some(message_id) = &message.id {
                let key = format!("i/{id}\0{message_id}");
                if self.0.contains_key(&key) {
                    skipped += 1;
                    continue;
                }
                self.0.insert(key, Vec::new());
            }
            head.last_seq += 1;
            let stored = json!({ "id": message.id, "body": message.body });
            self.0.insert(
                format!("m/{id}\0{:020}", head.last_seq),
                stored.to_string().into_bytes(),
            );
            appended += 1;
        }
        (appended, skipped)
    }

    /// `create`, once the thread is validated.
    fn create(&mut self, thread: Thread) -> Result<Committed> {
        if self.head(&thread.id)?.is_some() {
            return Err(ThreadStoreError::AlreadyExists { id: thread.id });
        }
        Ok(self.insert(thread))
    }

    /// Writes a new thread at version 1.
    fn insert(&mut self, thread: Thread) -> Committed {
        let mut head = Head {
            kind: thread.kind,
            parent: thread.parent_id,
            metadata: thread.metadata,
            state: thread.state,
            version: 1,
            last_seq: 0,
            terminal: thread.terminal,
        };
        let (appended, skipped) = self.append_messages(&thread.id, &mut head, thread.messages);
        self.put_head(&thread.id, None, &head);
        head.committed(appended, skipped)
    }

    /// `append`, once the ids are validated: the precondition is checked
    /// before anything is written, in the same step as the write.
    fn append(
        &mut self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        let old = self
            .head(id)?
            .ok_or_else(|| ThreadStoreError::NotFound { id: id.to_owned() })?;
        if let VersionPrecondition::Exact(expected) = precondition
            && expected != old.version
        {
            return Err(ThreadStoreError::VersionConflict {
                id: id.to_owned(),
                expected,
                actual: old.version,
            });
        }
        let mut head = old.clone();
        let mut changed = changes.state.is_some() || changes.terminal.is_some();
        if let Some(state) = changes.state {
            head.state = state;
        }
        if let Some(terminal) = changes.terminal {
            head.terminal = terminal;
        }
        let (appended, skipped) = self.append_messages(id, &mut head, changes.messages);
        changed |= appended > 0;
        if changed {
            // Only a write that changes something moves the version.
            head.version += 1;
            self.put_head(id, Some(&old), &head);
        }
        Ok(head.committed(appended, skipped))
    }

    /// `save`, once the thread is validated.
    fn save(&mut self, thread: Thread) -> Result<Committed> {
        let Some(old) = self.head(&thread.id)? else {
            return Ok(self.insert(thread));
        };
        let mut head = Head {
            kind: thread.kind,
            parent: thread.parent_id,
            metadata: thread.metadata,
            state: thread.state,
            version: old.version + 1,
            last_seq: old.last_seq,
            terminal: thread.terminal,
        };
        let (appended, skipped) = self.append_messages(&thread.id, &mut head, thread.messages);
        self.put_head(&thread.id, Some(&old), &head);
        Ok(head.committed(appended, skipped))
    }

    /// Removes every key of a thread: its head, log, message ids and index
    /// entries.
    fn delete(&mut self, id: &str) -> Result<()> {
        let Some(head) = self.head(id)? else {
            return Ok(());
        };
        for key in index_keys(id, &head) {
            self.0.remove(&key);
        }
        self.0.remove(&format!("t/{id}"));
        for prefix in [format!("m/{id}\0"), format!("i/{id}\0")] {
            let keys: Vec<String> = self.keys_under(&prefix, None).collect();
            for key in keys {
                self.0.remove(&key);
            }
        }
        Ok(())
    }

    /// The keys that start with `prefix`, in order, after `prefix + after`.
    fn keys_under<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = String> + 'a {
        let start = match after {
            Some(after) => Bound::Excluded(format!("{prefix}{after}")),
            None => Bound::Included(prefix.to_owned()),
        };
        self.0
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(key, _)| key)
            .take_while(move |key| key.starts_with(prefix))
            .cloned()
    }

    fn list(&self, query: &ThreadQuery) -> ThreadPage {
        let open = query.open_only;
        // Walk one index (the parent's when there is one), check the other.
        let (walk, check) = match (&query.parent_id, &query.kind) {
            (Some(parent), kind) => (
                format!("{}/{parent}\0", if open { "P" } else { "p" }),
                kind.as_ref()
                    .map(|kind| format!("{}/{kind}\0", if open { "K" } else { "k" })),
            ),
            (None, Some(kind)) => (format!("{}/{kind}\0", if open { "K" } else { "k" }), None),
            (None, None) => ((if open { "o/" } else { "t/" }).to_owned(), None),
        };
        let limit = effective_limit(query.limit);
        let mut ids: Vec<String> = self
            .keys_under(&walk, query.after.as_deref())
            .map(|key| key[walk.len()..].to_owned())
            .filter(|id| {
                check
                    .as_ref()
                    .is_none_or(|check| self.0.contains_key(&format!("{check}{id}")))
            })
            .take(limit + 1)
            .collect();
        // One id past the page tells whether there is a next page.
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().cloned()
        } else {
            None
        };
        ThreadPage { ids, next }
    }

    fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        let head = self
            .head(id)?
            .ok_or_else(|| ThreadStoreError::NotFound { id: id.to_owned() })?;
        let limit = effective_limit(query.limit);
        let prefix = format!("m/{id}\0");
        let first = query.after.saturating_add(1);
        let mut messages = Vec::new();
        for seq in (first..=head.last_seq).take(limit) {
            let bytes = self.0.get(&format!("{prefix}{seq:020}")).ok_or_else(|| {
                ThreadStoreError::corrupt(id, format!("message {seq} is missing"))
            })?;
            let value: Value = serde_json::from_slice(bytes)
                .map_err(|e| ThreadStoreError::corrupt(id, format!("message {seq}: {e}")))?;
            messages.push(Message {
                seq,
                id: value["id"].as_str().map(str::to_owned),
                body: value["body"].clone(),
            });
        }
        let next = messages
            .last()
            .map(|m| m.seq)
            .filter(|&last| last < head.last_seq);
        Ok(MessagePage { messages, next })
    }
}

impl MinimalStore {
    fn kv(&self) -> MutexGuard<'_, Kv> {
        // Every write checks before it changes anything, so a panic cannot
        // leave half a write behind: a poisoned lock is still consistent.
        self.kv.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn validate_append(id: &str, changes: &ChangeSet) -> Result<()> {
    validate_id("thread id", id)?;
    validate_messages(&changes.messages)
}

#[async_trait]
impl ThreadReader for MinimalStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        validate_id("thread id", id)?;
        Ok(self.kv().head(id)?.map(|head| ThreadHead {
            id: id.to_owned(),
            kind: head.kind,
            parent_id: head.parent,
            metadata: head.metadata,
            state: head.state,
            version: head.version,
            last_seq: head.last_seq,
            terminal: head.terminal,
        }))
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        validate_id("thread id", id)?;
        self.kv().load_messages(id, query)
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        validate_query(&query)?;
        Ok(self.kv().list(&query))
    }
}

#[async_trait]
impl ThreadWriter for MinimalStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        // Validate first: a refused request changes nothing.
        validate_thread(&thread)?;
        self.kv().create(thread)
    }

    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        // Each item on its own, in order, under one lock for the batch: an
        // id taken by an earlier item is taken.
        let mut kv = self.kv();
        threads
            .into_iter()
            .map(|thread| {
                validate_thread(&thread)?;
                kv.create(thread)
            })
            .collect()
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        validate_append(id, &changes)?;
        self.kv().append(id, changes, precondition)
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        let mut kv = self.kv();
        requests
            .into_iter()
            .map(|request| {
                validate_append(&request.id, &request.changes)?;
                kv.append(&request.id, request.changes, request.precondition)
            })
            .collect()
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        self.kv().save(thread)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id("thread id", id)?;
        self.kv().delete(id)
    }

    /// No wake-up signals: callers rely on polling, as the contract allows.
    fn signals(&self) -> Option<&dyn ThreadSignals> {
        None
    }
}

/// Runs both suites against fresh `MinimalStore`s and prints their reports.
fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (storage, task_layer) = runtime.block_on(async {
        (
            task_testkit::conformance::run_all(|| async { Arc::new(MinimalStore::default()) })
                .await,
            task_core::testing::run_all(|| async { Arc::new(MinimalStore::default()) }).await,
        )
    });
    println!("{storage}\n{task_layer}");
    if storage.all_passed() && task_layer.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::MinimalStore;

    // The storage contract, one test per case.
    task_testkit::conformance_tests!(storage, async {
        std::sync::Arc::new(MinimalStore::default())
    });

    // The task layer's persistence suite, one test per case.
    task_core::persistence_tests!(task_layer, async {
        std::sync::Arc::new(MinimalStore::default())
    });
}
