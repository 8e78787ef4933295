//! Deliberately broken stores, to show that the conformance suite catches
//! what it claims to catch: its self-test by mutation.
//!
//! [`mutants`] lists every broken store: each is a store that keeps the
//! contract but for *one* subtle defect of the kind a backend author makes
//! (a race between a check and a write, an off-by-one in paging, a stale
//! index entry, a de-duplication window, a partial write, a wrong error...),
//! with the cases written to catch it. Each is a [`SmallStore`] (a plain
//! in-memory store that passes the whole suite) with one [`Defect`] switched
//! on. [`PassThrough`] is a faithful wrapper: it must pass every case, which
//! shows a wrapper that forwards every call breaks nothing.
//!
//! `tests/mutation.rs` of this crate runs the whole suite against every
//! mutant and fails unless each is caught by at least one case (and by the
//! cases named for it); it prints which cases catch which defect, so a thin
//! spot shows:
//!
//! ```text
//! cargo test -p task-testkit --test mutation -- --nocapture
//! ```
//!
//! Never use these outside tests of the suite itself.

mod defect;
mod small;

use std::sync::Arc;

use async_trait::async_trait;
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadSignals, ThreadStore, ThreadWriter,
    VersionPrecondition,
};

pub use defect::Defect;
pub use small::SmallStore;

/// A broken store of the catalogue, see [`mutants`].
#[derive(Debug, Clone, Copy)]
pub struct Mutant {
    /// A short name: the [`Defect`]'s.
    pub name: &'static str,
    /// What is wrong with it.
    pub defect: &'static str,
    /// The conformance cases written to catch it; others may catch it too.
    pub caught_by: &'static [&'static str],
    kind: Defect,
}

impl Mutant {
    /// Makes a fresh, empty one.
    pub fn make(&self) -> Arc<dyn ThreadStore> {
        Arc::new(SmallStore::with_defect(self.kind))
    }
}

/// Every broken store: a [`SmallStore`] per [`Defect`].
pub fn mutants() -> Vec<Mutant> {
    Defect::ALL
        .iter()
        .map(|&defect| Mutant {
            name: defect.name(),
            defect: defect.description(),
            caught_by: defect.caught_by(),
            kind: defect,
        })
        .collect()
}

/// A faithful wrapper: forwards every call to the inner store unchanged. It
/// must pass every case the inner store passes.
#[derive(Debug, Clone, Default)]
pub struct PassThrough<S> {
    inner: S,
}

impl<S> PassThrough<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl<S: ThreadStore> ThreadReader for PassThrough<S> {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        self.inner.load(id).await
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        self.inner.load_messages(id, query).await
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        self.inner.list_threads(query).await
    }
}

#[async_trait]
impl<S: ThreadStore> ThreadWriter for PassThrough<S> {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        self.inner.create(thread).await
    }

    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        self.inner.create_batch(threads).await
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        self.inner.append(id, changes, precondition).await
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        self.inner.append_batch(requests).await
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        self.inner.save(thread).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.inner.delete(id).await
    }

    fn signals(&self) -> Option<&dyn ThreadSignals> {
        self.inner.signals()
    }
}
