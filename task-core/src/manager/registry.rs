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
//!
//! # Allocation
//!
//! A spawn is on the hot path of every caller, so the registry shares rather
//! than copies: a task's identity lives once, in its slot, and the id table,
//! the owner's creation order and the task's context all point at the slot.
//! Owners and task types are interned (one `Arc` each, shared by all their
//! tasks). Summaries are built from the slot when asked for.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::{RunCancellationToken, TaskId, TaskStatus, TaskSummary};

/// The hasher of the registry's tables: seeded per process, so ids chosen by
/// callers cannot be crafted to collide, and several times cheaper than
/// SipHash on short keys.
pub(crate) type BuildHasher = foldhash::quality::RandomState;

/// Distinct task types interned at most; beyond this, new types are stored
/// per task (so a caller inventing types cannot grow the table unboundedly).
const MAX_INTERNED_TYPES: usize = 4096;

/// One owner, shared by its index and by every one of its tasks' slots.
#[derive(Debug)]
pub(crate) struct OwnerShared {
    pub(crate) name: Box<str>,
    /// How many of the owner's tasks are running.
    pub(crate) running: AtomicUsize,
}

/// One epoch of one task: its immutable identity and its locked state.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    pub(crate) task_id: TaskId,
    pub(crate) owner: Arc<OwnerShared>,
    pub(crate) task_type: Arc<str>,
    pub(crate) description: String,
    pub(crate) parent_task_id: Option<TaskId>,
    /// The task's metadata as JSON text (`None` for `null`): a small JSON
    /// object as a `Value` costs several hundred bytes, as text a few dozen.
    pub(crate) metadata: Option<Box<str>>,
    pub(crate) created_at_ms: u64,
    pub(crate) supports_resume: bool,
    /// Unique per spawn: the epoch of this slot and its place in the owner's
    /// creation order.
    pub(crate) seq: u64,
    /// Woken when the task stops running.
    pub(crate) finished: Notify,
    /// The task's mutable state; see [`lock`](Self::lock).
    pub(crate) state: Mutex<Entry>,
}

impl TaskSlot {
    /// The owner's id.
    pub(crate) fn owner(&self) -> &str {
        &self.owner.name
    }

    /// Locks the task's state. Every change is complete at each unlock, so
    /// a poisoned lock is still consistent and is recovered.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Entry> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the task stopped running (once: callers check the status
    /// they changed from).
    pub(crate) fn stopped_running(&self) {
        self.owner.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// The task's summary as of `entry` (this slot's locked state).
    pub(crate) fn summary(&self, entry: &Entry) -> TaskSummary {
        TaskSummary {
            task_id: self.task_id.clone(),
            task_type: self.task_type.to_string(),
            description: self.description.clone(),
            status: entry.status,
            error: entry.error.clone(),
            result: entry.result.clone(),
            created_at_ms: self.created_at_ms,
            completed_at_ms: entry.completed_at_ms,
            parent_task_id: self.parent_task_id.clone(),
            supports_resume: self.supports_resume,
            attempt: entry.attempt,
            // Written by `metadata_text`, so it parses.
            metadata: self
                .metadata
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or(Value::Null),
            persistence_error: entry.persistence_error.clone(),
        }
    }

    /// The task's cancellation token, made on first use. A task spawned
    /// without a caller's token gets one only when something asks for it (its
    /// context, mostly); it is born cancelled when the task's cancellation
    /// was already requested or the task no longer runs.
    pub(crate) fn token(&self) -> RunCancellationToken {
        let mut entry = self.lock();
        if let Some(token) = &entry.token {
            return token.clone();
        }
        let token = RunCancellationToken::new();
        if entry.cancel_requested || entry.shutting_down || entry.status != TaskStatus::Running {
            token.cancel();
        } else {
            entry.token = Some(token.clone());
        }
        token
    }
}

/// The mutable state of one task.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: TaskStatus,
    /// Its attempt: known at spawn, or learnt from the store's first write.
    pub(crate) attempt: u32,
    pub(crate) error: Option<String>,
    pub(crate) result: Option<Value>,
    pub(crate) completed_at_ms: Option<u64>,
    pub(crate) persistence_error: Option<String>,
    /// The caller's token, or the one made on first use; dropped once the
    /// task has finished: nothing cancels it any more.
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
    /// Store writes queued and not yet resolved, over all epochs of the id.
    pub(crate) pending_writes: u32,
    pub(crate) output_seq: u64,
}

impl Entry {
    /// The state of a task that starts running now.
    pub(crate) fn running(
        attempt: u32,
        token: Option<RunCancellationToken>,
        durable_attempt: Option<u32>,
        pending_writes: u32,
    ) -> Self {
        Self {
            status: TaskStatus::Running,
            attempt,
            error: None,
            result: None,
            completed_at_ms: None,
            persistence_error: None,
            token,
            cancel_requested: false,
            shutting_down: false,
            durable_attempt,
            abort: None,
            waiters: 0,
            pending_writes,
            output_seq: 0,
        }
    }

    /// Whether retention or `gc_terminal` may drop it: terminal, every write
    /// resolved, nobody waiting.
    pub(crate) fn is_collectable(&self) -> bool {
        self.status.is_terminal() && self.pending_writes == 0 && self.waiters == 0
    }
}

/// A slot in the id table, hashed and compared by its task id, so the table
/// needs no copy of the id.
#[derive(Debug, Clone)]
pub(crate) struct ById(pub(crate) Arc<TaskSlot>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.task_id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same as hashing the `&str` it borrows as.
        self.0.task_id.as_str().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.task_id == other.0.task_id
    }
}

impl Eq for ById {}

/// An owner's tasks.
#[derive(Debug)]
pub(crate) struct OwnerTasks {
    pub(crate) shared: Arc<OwnerShared>,
    /// The owner's slots in creation order.
    pub(crate) order: BTreeMap<u64, Arc<TaskSlot>>,
    /// Children by parent task id, for `cancel_tree`.
    pub(crate) children: HashMap<TaskId, Vec<TaskId>, BuildHasher>,
}

/// Every live task of a manager.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) tasks: HashSet<ById, BuildHasher>,
    pub(crate) owners: HashMap<Box<str>, OwnerTasks, BuildHasher>,
    types: HashSet<Arc<str>, BuildHasher>,
    pub(crate) next_seq: u64,
    pub(crate) closed: bool,
}

impl Registry {
    /// The current slot of a task id, whoever owns it.
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<TaskSlot>> {
        self.tasks.get(id).map(|k| &k.0)
    }

    /// The slot of `id` if `owner` owns it: another owner's task is
    /// indistinguishable from an unknown one.
    pub(crate) fn visible(&self, owner: &str, id: &str) -> Option<&Arc<TaskSlot>> {
        self.get(id).filter(|s| s.owner() == owner)
    }

    /// Whether the owner has a running task.
    pub(crate) fn has_running(&self, owner: &str) -> bool {
        self.owners
            .get(owner)
            .is_some_and(|o| o.shared.running.load(Ordering::Acquire) > 0)
    }

    /// The shared record of `owner`, created with its index if needed.
    pub(crate) fn owner(&mut self, owner: &str) -> Arc<OwnerShared> {
        if let Some(o) = self.owners.get(owner) {
            return Arc::clone(&o.shared);
        }
        let shared = Arc::new(OwnerShared {
            name: owner.into(),
            running: AtomicUsize::new(0),
        });
        self.add_owner(Arc::clone(&shared));
        shared
    }

    /// An empty index for an owner.
    fn add_owner(&mut self, shared: Arc<OwnerShared>) {
        self.owners.insert(
            shared.name.clone(),
            OwnerTasks {
                shared,
                order: BTreeMap::new(),
                children: HashMap::default(),
            },
        );
    }

    /// The interned form of a task type.
    pub(crate) fn task_type(&mut self, task_type: &str) -> Arc<str> {
        if let Some(t) = self.types.get(task_type) {
            return Arc::clone(t);
        }
        let t: Arc<str> = task_type.into();
        if self.types.len() < MAX_INTERNED_TYPES {
            self.types.insert(Arc::clone(&t));
        }
        t
    }

    /// Inserts a new, running task and indexes it under the owner record
    /// its slot holds (made by [`owner`](Self::owner)).
    pub(crate) fn insert(&mut self, slot: Arc<TaskSlot>) {
        if !self.owners.contains_key(slot.owner()) {
            self.add_owner(Arc::clone(&slot.owner));
        }
        if let Some(owner) = self.owners.get_mut(slot.owner()) {
            owner.order.insert(slot.seq, Arc::clone(&slot));
            owner.shared.running.fetch_add(1, Ordering::AcqRel);
            if let Some(parent) = &slot.parent_task_id {
                owner
                    .children
                    .entry(parent.clone())
                    .or_default()
                    .push(slot.task_id.clone());
            }
        }
        self.tasks.insert(ById(slot));
    }

    /// Removes a task and its index entries.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Arc<TaskSlot>> {
        let slot = self.tasks.take(id)?.0;
        let running = slot.lock().status == TaskStatus::Running;
        if let Some(owner) = self.owners.get_mut(slot.owner()) {
            owner.order.remove(&slot.seq);
            if running {
                slot.stopped_running();
            }
            if let Some(parent) = &slot.parent_task_id
                && let Some(siblings) = owner.children.get_mut(parent)
            {
                siblings.retain(|c| c != id);
                if siblings.is_empty() {
                    owner.children.remove(parent);
                }
            }
            if owner.order.is_empty() {
                self.owners.remove(slot.owner());
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
        let mut seen: HashSet<&str, BuildHasher> = HashSet::default();
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
    }

    /// The collectable task ids of `owner` in creation order, with when each
    /// finished (milliseconds of the manager's clock).
    pub(crate) fn collectable(&self, owner: &str) -> Vec<(TaskId, Option<u64>)> {
        self.owner_slots(owner)
            .filter_map(|slot| {
                let entry = slot.lock();
                entry
                    .is_collectable()
                    .then(|| (slot.task_id.clone(), entry.completed_at_ms))
            })
            .collect()
    }
}
