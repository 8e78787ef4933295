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
//! # Allocation and history
//!
//! A spawn is on the hot path of every caller, so the registry shares rather
//! than copies: a task's identity lives once, in its slot, and the id table,
//! the owner's creation order and the task's context all point at the slot.
//! Owners and task types are interned (one `Arc` each, shared by all their
//! tasks). Summaries are built from the slot when asked for.
//!
//! The registry keeps nothing of a task once it is collected: its owner's
//! index is dropped with its last task, and tables that have shrunk to a
//! quarter of their capacity give memory back, so an owner's calls cost the
//! same after a long history as in a fresh manager ([`Registry::stats`]
//! shows it).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use super::task::{Entry, OwnerShared, TaskSlot};
use crate::{TaskId, TaskStatus};

/// The hasher of the registry's tables: seeded per process, so ids chosen by
/// callers cannot be crafted to collide, and several times cheaper than
/// SipHash on short keys.
pub(crate) type BuildHasher = foldhash::quality::RandomState;

/// Distinct task types interned at most; beyond this, new types are stored
/// per task (so a caller inventing types cannot grow the table unboundedly).
const MAX_INTERNED_TYPES: usize = 4096;

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
    /// With a retention policy: tasks that became collectable, in that
    /// order (an entry whose slot is gone or no longer collectable is
    /// skipped when it comes up).
    pub(crate) collectable: VecDeque<Weak<TaskSlot>>,
    /// How many of the owner's tasks are closed (terminal, or stopped for
    /// good).
    pub(crate) closed: usize,
}

/// What a manager holds, for metrics and for tests that check that
/// collected tasks leave nothing behind
/// ([`BackgroundTaskManager::stats`](crate::BackgroundTaskManager::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Tasks held (every status).
    pub tasks: usize,
    /// Tasks running.
    pub running: usize,
    /// Owners with at least one task held.
    pub owners: usize,
    /// Parent links indexed for `cancel_tree`, over all owners.
    pub parent_links: usize,
    /// Entries waiting in the retention queues, over all owners.
    pub retention_queue: usize,
    /// Slots allocated in the id table (it shrinks as tasks are collected).
    pub id_table_capacity: usize,
    /// Store writes queued and not yet durable (0 without a task store).
    pub pending_writes: usize,
}

/// What the limits count and hold, under the registry lock.
#[derive(Debug, Default)]
pub(crate) struct LimitState {
    /// Running tasks of each limited type.
    pub(crate) running_by_type: HashMap<Arc<str>, usize, BuildHasher>,
    /// Tasks waiting for the limits, in the order they were spawned.
    pub(crate) queue: VecDeque<Arc<TaskSlot>>,
}

/// Every live task of a manager.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) tasks: HashSet<ById, BuildHasher>,
    pub(crate) owners: HashMap<Box<str>, OwnerTasks, BuildHasher>,
    types: HashSet<Arc<str>, BuildHasher>,
    pub(crate) next_seq: u64,
    /// What the concurrency limits count and hold.
    pub(crate) limited: LimitState,
    /// No new task is admitted (the manager shuts down).
    pub(crate) closed: bool,
    /// Admitted calls still launching (see `Admission`).
    pub(crate) launching: usize,
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
            Box::from(&*shared.name),
            OwnerTasks {
                shared,
                order: BTreeMap::new(),
                children: HashMap::default(),
                collectable: VecDeque::new(),
                closed: 0,
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
        let running = slot.lock().status == TaskStatus::Running;
        if let Some(owner) = self.owners.get_mut(slot.owner()) {
            owner.order.insert(slot.seq, Arc::clone(&slot));
            if running {
                owner.shared.running.fetch_add(1, Ordering::AcqRel);
            }
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
        let (running, closed) = {
            let entry = slot.lock();
            (entry.status == TaskStatus::Running, entry.counted_closed)
        };
        if let Some(owner) = self.owners.get_mut(slot.owner()) {
            owner.order.remove(&slot.seq);
            if running {
                slot.stopped_running();
            }
            if closed {
                owner.closed = owner.closed.saturating_sub(1);
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
            } else {
                shrink_map(&mut owner.children);
            }
        }
        shrink_set(&mut self.tasks);
        shrink_map(&mut self.owners);
        Some(slot)
    }

    /// Counts one of the owner's tasks as closed (it just became so), once.
    pub(crate) fn count_closed(&mut self, slot: &TaskSlot) {
        let mut entry = slot.lock();
        if entry.counted_closed || !slot.is_closed(&entry) {
            return;
        }
        if let Some(owner) = self.owners.get_mut(slot.owner()) {
            entry.counted_closed = true;
            owner.closed += 1;
        }
    }

    /// Offers a task that just became collectable to retention.
    pub(crate) fn offer_collectable(&mut self, slot: &Arc<TaskSlot>) {
        if let Some(owner) = self.owners.get_mut(slot.owner()) {
            owner.collectable.push_back(Arc::downgrade(slot));
        }
    }

    /// Drops the owner's collectable tasks that `expired` or the count limit
    /// no longer keeps, oldest first. Amortised O(1) per finished task: it
    /// pops the front of the owner's retention queue, and compacts the queue
    /// when stale entries make up most of it.
    pub(crate) fn enforce_retention(
        &mut self,
        owner: &str,
        max_closed: Option<usize>,
        expired: impl Fn(&TaskSlot, &Entry) -> bool,
    ) {
        let max_closed = max_closed.unwrap_or(usize::MAX);
        loop {
            let Some(index) = self.owners.get_mut(owner) else {
                return;
            };
            let Some(candidate) = index.collectable.front() else {
                return;
            };
            let current = candidate.upgrade().filter(|slot| {
                index
                    .order
                    .get(&slot.seq)
                    .is_some_and(|held| Arc::ptr_eq(held, slot))
            });
            let Some(slot) = current else {
                index.collectable.pop_front();
                continue;
            };
            let (collectable, old) = {
                let entry = slot.lock();
                (is_collectable(&slot, &entry), expired(&slot, &entry))
            };
            if !collectable {
                // Offered again when it becomes collectable again.
                index.collectable.pop_front();
                continue;
            }
            if !(old || index.closed > max_closed) {
                break;
            }
            index.collectable.pop_front();
            self.remove(&slot.task_id);
        }
        if let Some(index) = self.owners.get_mut(owner)
            && index.collectable.len() > 64
            && index.collectable.len() > 2 * index.closed
        {
            index.collectable.retain(|weak| weak.strong_count() > 0);
            index.collectable.shrink_to_fit();
        }
    }

    /// The slots of every task of `owner` held here and reachable from
    /// `root` through parent links, `root` first, each once, even when the
    /// links form a cycle. Costs the size of the tree.
    pub(crate) fn tree(&self, owner: &str, root: &str) -> Vec<&Arc<TaskSlot>> {
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
            if let Some(slot) = self.visible(owner, id) {
                out.push(slot);
            }
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

    /// The collectable task ids of `owner`, in creation order.
    pub(crate) fn collectable(&self, owner: &str) -> Vec<TaskId> {
        self.owner_slots(owner)
            .filter(|slot| is_collectable(slot, &slot.lock()))
            .map(|slot| slot.task_id.clone())
            .collect()
    }

    /// What the registry holds.
    pub(crate) fn stats(&self) -> ManagerStats {
        let mut stats = ManagerStats {
            tasks: self.tasks.len(),
            owners: self.owners.len(),
            id_table_capacity: self.tasks.capacity(),
            ..ManagerStats::default()
        };
        for owner in self.owners.values() {
            stats.running += owner.shared.running.load(Ordering::Acquire);
            stats.parent_links += owner.children.values().map(Vec::len).sum::<usize>();
            stats.retention_queue += owner.collectable.len();
        }
        stats
    }
}

/// Whether retention or `gc_terminal` may drop a task: closed, every write
/// resolved, nobody waiting.
pub(crate) fn is_collectable(slot: &TaskSlot, entry: &Entry) -> bool {
    slot.is_closed(entry) && entry.pending_writes == 0 && entry.waiters == 0
}

/// Gives memory back once a table is down to a quarter of its capacity.
fn shrink_set<T: Hash + Eq>(set: &mut HashSet<T, BuildHasher>) {
    if set.capacity() > 64 && set.len() < set.capacity() / 4 {
        set.shrink_to(set.len() * 2);
    }
}

fn shrink_map<K: Hash + Eq, V>(map: &mut HashMap<K, V, BuildHasher>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;

    fn slot(reg: &mut Registry, owner: &str, id: &str) -> Arc<TaskSlot> {
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let slot = Arc::new(TaskSlot {
            task_id: id.to_owned(),
            owner: reg.owner(owner),
            task_type: reg.task_type("t"),
            description: String::new(),
            parent_task_id: None,
            metadata: None,
            created_at_ms: 0,
            supports_resume: false,
            attempt: 1,
            run_id: None,
            seq,
            policy: None,
            finished: Notify::new(),
            state: Mutex::new(Entry::running(None, 0)),
        });
        reg.insert(Arc::clone(&slot));
        slot
    }

    fn finish(reg: &mut Registry, slot: &Arc<TaskSlot>) {
        {
            let mut entry = slot.lock();
            entry.status = TaskStatus::Completed;
            slot.stopped_running();
        }
        reg.count_closed(slot);
        reg.offer_collectable(slot);
    }

    /// The cost of retention per finished task is a few checks, whatever the
    /// number of tasks the owner holds (it once walked them all).
    #[test]
    fn retention_costs_constant_work_per_finished_task() {
        let mut reg = Registry::default();
        let checks = Cell::new(0usize);
        let n = 10_000;
        for i in 0..n {
            let s = slot(&mut reg, "o", &format!("t{i}"));
            finish(&mut reg, &s);
            reg.enforce_retention("o", Some(100), |_, _| {
                checks.set(checks.get() + 1);
                false
            });
        }
        assert_eq!(reg.owner_slots("o").count(), 100);
        assert!(
            checks.get() <= 2 * n,
            "{} checks for {n} finishes",
            checks.get()
        );
        // A waited-on task is skipped and offered again later.
        let waited = slot(&mut reg, "o", "waited");
        finish(&mut reg, &waited);
        waited.lock().waiters = 1;
        for i in 0..200 {
            let s = slot(&mut reg, "o", &format!("more{i}"));
            finish(&mut reg, &s);
            reg.enforce_retention("o", Some(100), |_, _| false);
        }
        assert!(
            reg.get("waited").is_some(),
            "never collected while waited on"
        );
    }

    #[test]
    fn collected_tasks_leave_nothing_behind() {
        let mut reg = Registry::default();
        for i in 0..10_000 {
            let s = slot(&mut reg, "o", &format!("t{i}"));
            finish(&mut reg, &s);
        }
        let big = reg.stats();
        assert_eq!(big.tasks, 10_000);
        for id in reg.collectable("o") {
            reg.remove(&id);
        }
        let empty = reg.stats();
        assert_eq!(
            (
                empty.tasks,
                empty.owners,
                empty.parent_links,
                empty.retention_queue
            ),
            (0, 0, 0, 0)
        );
        assert!(
            empty.id_table_capacity <= 128,
            "the id table gave its memory back: {empty:?}"
        );
    }
}
