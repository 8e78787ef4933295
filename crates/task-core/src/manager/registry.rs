//! The live registry of one manager: tasks by id, and per-owner indexes so
//! every owner-scoped operation costs what that owner has.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::{RunCancellationToken, TaskId, TaskStatus, TaskSummary};

/// One live task.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) owner: String,
    pub(crate) summary: TaskSummary,
    /// Unique per spawn: the epoch of this entry and its place in the
    /// owner's creation order.
    pub(crate) seq: u64,
    pub(crate) token: RunCancellationToken,
    pub(crate) cancel_requested: bool,
    /// Interrupted by `shutdown`, not cancelled by a caller.
    pub(crate) shutting_down: bool,
    /// The durable attempt of this epoch, when known before its first write
    /// (a resumed task).
    pub(crate) durable_attempt: Option<u32>,
    pub(crate) abort: Option<AbortHandle>,
    /// Callers inside `wait` for this epoch: the entry is never collected
    /// while there are any.
    pub(crate) waiters: u32,
    pub(crate) notify: Option<Arc<Notify>>,
    /// Store writes queued and not yet resolved, over all epochs of the id.
    pub(crate) pending_writes: u32,
    pub(crate) finished_at: Option<Instant>,
    pub(crate) output_seq: u64,
}

impl Entry {
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
    pub(crate) running: usize,
    /// Children by parent task id, for `cancel_tree`.
    pub(crate) children: HashMap<TaskId, Vec<TaskId>>,
}

/// Every live task of a manager.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) tasks: HashMap<TaskId, Entry>,
    pub(crate) owners: HashMap<String, OwnerTasks>,
    pub(crate) next_seq: u64,
    pub(crate) closed: bool,
}

impl Registry {
    /// The entry of `id` if `owner` owns it: another owner's task is
    /// indistinguishable from an unknown one.
    pub(crate) fn visible(&self, owner: &str, id: &str) -> Option<&Entry> {
        self.tasks.get(id).filter(|e| e.owner == owner)
    }

    /// As [`visible`](Self::visible), mutably.
    pub(crate) fn visible_mut(&mut self, owner: &str, id: &str) -> Option<&mut Entry> {
        self.tasks.get_mut(id).filter(|e| e.owner == owner)
    }

    /// Inserts a new entry and indexes it.
    pub(crate) fn insert(&mut self, id: TaskId, entry: Entry) {
        let owner = self.owners.entry(entry.owner.clone()).or_default();
        owner.order.insert(entry.seq, id.clone());
        if entry.summary.status == TaskStatus::Running {
            owner.running += 1;
        }
        if let Some(parent) = &entry.summary.parent_task_id {
            owner
                .children
                .entry(parent.clone())
                .or_default()
                .push(id.clone());
        }
        self.tasks.insert(id, entry);
    }

    /// Removes an entry and its index entries.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.tasks.remove(id)?;
        if let Some(owner) = self.owners.get_mut(&entry.owner) {
            owner.order.remove(&entry.seq);
            if entry.summary.status == TaskStatus::Running {
                owner.running -= 1;
            }
            if let Some(parent) = &entry.summary.parent_task_id
                && let Some(siblings) = owner.children.get_mut(parent)
            {
                siblings.retain(|c| c != id);
                if siblings.is_empty() {
                    owner.children.remove(parent);
                }
            }
            if owner.order.is_empty() {
                self.owners.remove(&entry.owner);
            }
        }
        Some(entry)
    }

    /// Records that a running entry of `owner` stopped running.
    pub(crate) fn mark_not_running(&mut self, owner: &str) {
        if let Some(o) = self.owners.get_mut(owner) {
            o.running -= 1;
        }
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

    /// The collectable task ids of `owner` in creation order.
    pub(crate) fn collectable(&self, owner: &str) -> Vec<TaskId> {
        self.owners.get(owner).map_or_else(Vec::new, |o| {
            o.order
                .values()
                .filter(|id| self.tasks.get(*id).is_some_and(Entry::is_collectable))
                .cloned()
                .collect()
        })
    }
}
