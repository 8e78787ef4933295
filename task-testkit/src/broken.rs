//! Deliberately broken stores, to show that the conformance suite catches
//! what it claims to catch.
//!
//! Never use these outside tests of the suite itself.

use async_trait::async_trait;
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadStore, ThreadWriter, VersionPrecondition,
};

/// A store that silently turns every `Exact(v)` precondition into `Any`: the
/// defect that loses concurrent updates. The contract forbids it (a backend
/// that cannot check a precondition must refuse it), and the conformance
/// suite must fail against it.
#[derive(Debug, Clone, Default)]
pub struct IgnoresPreconditions<S> {
    inner: S,
}

impl<S> IgnoresPreconditions<S> {
    /// Wraps `inner`, ignoring every precondition given to it.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl<S: ThreadStore> ThreadReader for IgnoresPreconditions<S> {
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
impl<S: ThreadStore> ThreadWriter for IgnoresPreconditions<S> {
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
        _precondition: VersionPrecondition,
    ) -> Result<Committed> {
        self.inner
            .append(id, changes, VersionPrecondition::Any)
            .await
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        let requests = requests
            .into_iter()
            .map(|request| AppendRequest {
                precondition: VersionPrecondition::Any,
                ..request
            })
            .collect();
        self.inner.append_batch(requests).await
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        self.inner.save(thread).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.inner.delete(id).await
    }

    fn signals(&self) -> Option<&dyn task_store::ThreadSignals> {
        self.inner.signals()
    }
}
