//! The live registry of one manager: tasks by id, and per-owner indexes so
//! every owner-scoped operation costs what that owner has.
//!
//! # Locking
//!
//! Two levels: the registry lock guards the maps (which tasks exist, in
//! which order, with which parents); each task's [`TaskSlot`] has its own
//! lock over its mutable state. A task's own transitions (finish, output,
//! outbox reports) take only its slot lock, so running tasks never contend on
//! the registry. Whoever needs both takes the registry lock first; code
//! holding a slot lock never takes the registry lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::{RunCancellationToken, TaskId, TaskStatus, TaskSummary};

/// One epoch of one task: its immutable identity and its locked state.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    pub(crate) owner: String,
    /// Unique per spawn: the epoch of this slot and its place in the owner's
    /// creation order.
    pub(crate) seq: u64,
    /// The owner's running count, decremented when this task stops running.
    pub(crate) owner_running: Arc<AtomicUsize>,
    state: Mutex<Entry>,
}

impl TaskSlot {
    pub(crate) fn new(
        owner: String,
        seq: u64,
        owner_running: Arc<AtomicUsize>,
        entry: Entry,
    ) -> Self {
        Self {
            owner,
            seq,
            owner_running,
            state: Mutex::new(entry),
        }
    }

    /// Locks the task's state. Every change is complete at each unlock, so
    /// a poisoned lock is still consistent and is recovered.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Entry> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the task stopped running (once: callers check the status
    /// they changed from).
    pub(crate) fn stopped_running(&self) {
        self.owner_running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The mutable state of one task.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The summary, except `metadata`, which is kept as JSON text (below)
    /// and restored by [`Entry::summary`]: a small JSON object as a `Value`
    /// costs several hundred bytes, as text a few dozen.
    pub(crate) summary: TaskSummary,
    /// The task's metadata as JSON text; `None` for `null`.
    pub(crate) metadata: Option<Box<str>>,
    /// Dropped once the task has finished: nothing cancels it any more.
    pub(crate) token: Option<RunCancellationToken>,
    pub(crate) cancel_requested: bool,
    /// Interrupted by `shutdown`, not cancelled by a caller.
    pub(crate) shutting_down: bool,
    /// The durable attempt of this epoch, when known before its first write
    /// (a resumed task).
    pub(crate) durable_attempt: Option<u32>,
    pub(crate) abort: Option<AbortHandle>,
    /// Callers inside `wait` for this epoch: the task is never collected
    /// while there are any.
    pub(crate) waiters: u32,
    pub(crate) notify: Option<Arc<Notify>>,
    /// Store writes queued and not yet resolved, over all epochs of the id.
    pub(crate) pending_writes: u32,
    pub(crate) finished_at: Option<Instant>,
    pub(crate) output_seq: u64,
}

impl Entry {
    /// The task's summary, with its metadata.
    pub(crate) fn summary(&self) -> TaskSummary {
        let mut summary = self.summary.clone();
        if let Some(text) = &self.metadata {
            // Written by `encode_metadata`, so it parses.
            summary.metadata = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        }
        summary
    }

    /// The compact form of a task's metadata.
    pub(crate) fn encode_metadata(metadata: &serde_json::Value) -> Option<Box<str>> {
        if metadata.is_null() {
            return None;
        }
        serde_json::to_string(metadata)
            .ok()
            .map(String::into_boxed_str)
    }

    /// Whether retention or `gc_terminal` may drop it: terminal, every write
    /// resolved, nobody waiting.
    pub(crate) fn is_collectable(&self) -> bool {
        self.summary.status.is_terminal() && self.pending_writes == 0 && self.waiters == 0
    }
}

/// An owner's tasks.
#[derive(Debug, Default)]
pub(crate) struct OwnerTasks {
    /// Task ids in creation order.
    pub(crate) order: BTreeMap<u64, TaskId>,
    /// How many are running.
    pub(crate) running: Arc<AtomicUsize>,
    /// Children by parent task id, for `cancel_tree`.
    pub(crate) children: HashMap<TaskId, Vec<TaskId>>,
}

/// Every live task of a manager.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) tasks: HashMap<TaskId, Arc<TaskSlot>>,
    pub(crate) owners: HashMap<String, OwnerTasks>,
    pub(crate) next_seq: u64,
    pub(crate) closed: bool,
}

impl Registry {
    /// The slot of `id` if `owner` owns it: another owner's task is
    /// indistinguishable from an unknown one.
    pub(crate) fn visible(&self, owner: &str, id: &str) -> Option<&Arc<TaskSlot>> {
        self.tasks.get(id).filter(|s| s.owner == owner)
    }

    /// The running counter of `owner`, created with its index if needed.
    pub(crate) fn owner_running(&mut self, owner: &str) -> Arc<AtomicUsize> {
        match self.owners.get(owner) {
            Some(o) => Arc::clone(&o.running),
            None => {
                let index = OwnerTasks::default();
                let running = Arc::clone(&index.running);
                self.owners.insert(owner.to_owned(), index);
                running
            }
        }
    }

    /// Inserts a new, running task and indexes it.
    pub(crate) fn insert(&mut self, id: TaskId, slot: Arc<TaskSlot>, parent: Option<&TaskId>) {
        // `owner_running` created the owner's index for this spawn.
        let owner = match self.owners.get_mut(&slot.owner) {
            Some(owner) => owner,
            None => self.owners.entry(slot.owner.clone()).or_default(),
        };
        owner.order.insert(slot.seq, id.clone());
        owner.running.fetch_add(1, Ordering::AcqRel);
        if let Some(parent) = parent {
            owner
                .children
                .entry(parent.clone())
                .or_default()
                .push(id.clone());
        }
        self.tasks.insert(id, slot);
    }

    /// Removes a task and its index entries.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Arc<TaskSlot>> {
        let slot = self.tasks.remove(id)?;
        let (running, parent) = {
            let entry = slot.lock();
            (
                entry.summary.status == TaskStatus::Running,
                entry.summary.parent_task_id.clone(),
            )
        };
        if let Some(owner) = self.owners.get_mut(&slot.owner) {
            owner.order.remove(&slot.seq);
            if running {
                slot.stopped_running();
            }
            if let Some(parent) = &parent
                && let Some(siblings) = owner.children.get_mut(parent)
            {
                siblings.retain(|c| c != id);
                if siblings.is_empty() {
                    owner.children.remove(parent);
                }
            }
            if owner.order.is_empty() {
                self.owners.remove(&slot.owner);
            }
        }
        Some(slot)
    }

    /// Every task of `owner` reachable from `root` through parent links,
    /// `root` first, each once, even when the links form a cycle. Costs the
    /// size of the tree.
    pub(crate) fn tree(&self, owner: &str, root: &str) -> Vec<TaskId> {
        let Some(index) = self.owners.get(owner) else {
            return Vec::new();
        };
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        let mut queue: VecDeque<&str> = VecDeque::from([root]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            out.push(id.to_owned());
            if let Some(children) = index.children.get(id) {
                queue.extend(children.iter().map(String::as_str));
            }
        }
        out
    }

    /// The owner's slots in creation order.
    pub(crate) fn owner_slots<'a>(
        &'a self,
        owner: &str,
    ) -> impl Iterator<Item = &'a Arc<TaskSlot>> {
        self.owners
            .get(owner)
            .into_iter()
            .flat_map(|o| o.order.values())
            .filter_map(|id| self.tasks.get(id))
    }

    /// The collectable task ids of `owner` in creation order, with when each
    /// finished.
    pub(crate) fn collectable(&self, owner: &str) -> Vec<(TaskId, Option<Instant>)> {
        self.owner_slots(owner)
            .filter_map(|slot| {
                let entry = slot.lock();
                entry
                    .is_collectable()
                    .then(|| (entry.summary.task_id.clone(), entry.finished_at))
            })
            .collect()
    }
}
