//! The data types of the contract: what is written, what is read, queries and pages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Free-form metadata of a thread: a JSON object.
pub type Metadata = serde_json::Map<String, Value>;

/// The largest page any listing returns, whatever limit was asked for.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// The page size used when a query asks for a limit of 0.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// Clamps a requested page size into `1..=MAX_PAGE_LIMIT` (0 means
/// [`DEFAULT_PAGE_LIMIT`]). Every backend pages through this function.
pub fn effective_limit(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_PAGE_LIMIT,
        n => n.min(MAX_PAGE_LIMIT),
    }
}

/// A thread as it is written by [`create`](crate::ThreadWriter::create) or
/// [`save`](crate::ThreadWriter::save): everything but the version, which the
/// store assigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    /// The thread's id, checked by [`validate_id`](crate::validate_id).
    pub id: String,
    /// What the thread is, for listing by kind (`"task"`).
    pub kind: String,
    /// The thread this one belongs to (for tasks: the owner), for listing by parent.
    pub parent_id: Option<String>,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The state snapshot.
    pub state: Value,
    /// Messages appended in the same atomic step as the write.
    pub messages: Vec<NewMessage>,
    /// Marks the thread as finished; backends with a retention policy may
    /// expire finished threads (see [`ChangeSet::terminal`]).
    pub terminal: bool,
}

impl Thread {
    /// A thread of `kind` with id `id`, no parent, empty metadata, a `null`
    /// state and no messages.
    pub fn new(id: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            parent_id: None,
            metadata: Metadata::new(),
            state: Value::Null,
            messages: Vec::new(),
            terminal: false,
        }
    }

    /// Sets the parent id.
    pub fn with_parent(mut self, parent_id: impl Into<String>) -> Self {
        self.parent_id = Some(parent_id.into());
        self
    }

    /// Sets the state snapshot.
    pub fn with_state(mut self, state: Value) -> Self {
        self.state = state;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds a message to append with the write.
    pub fn with_message(mut self, message: NewMessage) -> Self {
        self.messages.push(message);
        self
    }
}

/// The head of a stored thread: everything but its message log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadHead {
    /// The thread's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its parent, if any.
    pub parent_id: Option<String>,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its latest state snapshot.
    pub state: Value,
    /// Its version: 1 after creation, one more for every committed change.
    pub version: u64,
    /// The sequence number of the last message in its log (0 when empty).
    pub last_seq: u64,
    /// Whether the thread is marked finished.
    pub terminal: bool,
}

/// A message to append. With an `id`, appending it again is a no-op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Optional id for idempotent de-duplication, checked by
    /// [`validate_id`](crate::validate_id).
    pub id: Option<String>,
    /// The message's content.
    pub body: Value,
}

impl NewMessage {
    /// A message without an id (never de-duplicated).
    pub fn new(body: Value) -> Self {
        Self { id: None, body }
    }

    /// A message with an id: a second append of the same id is skipped.
    pub fn with_id(id: impl Into<String>, body: Value) -> Self {
        Self {
            id: Some(id.into()),
            body,
        }
    }
}

/// A message as stored in a thread's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its position in the log, from 1, without gaps.
    pub seq: u64,
    /// Its de-duplication id, if it was written with one.
    pub id: Option<String>,
    /// Its content.
    pub body: Value,
}

/// What an [`append`](crate::ThreadWriter::append) changes, atomically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// A new state snapshot that replaces the old one, if any.
    pub state: Option<Value>,
    /// Messages to append, in order. Those whose id is already in the log are
    /// skipped.
    pub messages: Vec<NewMessage>,
    /// Sets (`Some(true)`) or clears (`Some(false)`) the thread's finished
    /// mark. A backend with a retention policy expires finished threads after
    /// its TTL and removes them from its indexes.
    pub terminal: Option<bool>,
}

impl ChangeSet {
    /// A change set that replaces the state.
    pub fn state(state: Value) -> Self {
        Self {
            state: Some(state),
            ..Self::default()
        }
    }

    /// Adds a message to append.
    pub fn with_message(mut self, message: NewMessage) -> Self {
        self.messages.push(message);
        self
    }

    /// Sets the finished mark.
    pub fn with_terminal(mut self, terminal: bool) -> Self {
        self.terminal = Some(terminal);
        self
    }

    /// Whether this change set would change nothing.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.messages.is_empty() && self.terminal.is_none()
    }
}

/// The condition under which an append is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionPrecondition {
    /// Apply only if the stored version is exactly this one; otherwise fail
    /// with [`VersionConflict`](crate::ThreadStoreError::VersionConflict).
    Exact(u64),
    /// Apply whatever the stored version is.
    Any,
}

/// What a successful write committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The thread's version after the write. Unchanged when the write turned
    /// out to change nothing (every message a duplicate, no state).
    pub version: u64,
    /// The sequence number of the last message in the log after the write.
    pub last_seq: u64,
    /// How many messages were appended.
    pub appended: u64,
    /// How many messages were skipped as duplicates of earlier ids.
    pub skipped: u64,
}

/// One append of a batch, see [`append_batch`](crate::ThreadWriter::append_batch).
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// The thread to write.
    pub id: String,
    /// What to change.
    pub changes: ChangeSet,
    /// When to apply it.
    pub precondition: VersionPrecondition,
}

/// Which messages to read: those with `seq > after`, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageQuery {
    /// The cursor: the last sequence number already seen (0 for the start).
    pub after: u64,
    /// The page size, clamped by [`effective_limit`].
    pub limit: usize,
}

/// A page of a thread's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagePage {
    /// The messages, in sequence order.
    pub messages: Vec<Message>,
    /// The cursor for the next page, or `None` when this page reached the end.
    pub next: Option<u64>,
}

/// Which threads to list: by parent and/or kind, optionally only the open
/// (not finished) ones, in ascending id order, after a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ThreadQuery {
    /// Only threads with this parent.
    pub parent_id: Option<String>,
    /// Only threads of this kind.
    pub kind: Option<String>,
    /// Only open threads: those whose finished mark
    /// ([`Thread::terminal`], [`ChangeSet::terminal`]) is not set. Served
    /// from an index kept in the same atomic write as the mark, so its cost
    /// follows the open threads, never the finished ones: a thread leaves
    /// this listing in the write that marks it finished and comes back in the
    /// write that clears the mark.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_only: bool,
    /// The cursor: the last id already seen (ids are returned in ascending
    /// byte order).
    pub after: Option<String>,
    /// The page size, clamped by [`effective_limit`].
    pub limit: usize,
}

impl ThreadQuery {
    /// All threads with this parent.
    pub fn by_parent(parent_id: impl Into<String>) -> Self {
        Self {
            parent_id: Some(parent_id.into()),
            ..Self::default()
        }
    }

    /// All threads of this kind.
    pub fn by_kind(kind: impl Into<String>) -> Self {
        Self {
            kind: Some(kind.into()),
            ..Self::default()
        }
    }

    /// Narrows to a kind.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Narrows to open threads (see [`open_only`](Self::open_only)).
    pub fn open_only(mut self) -> Self {
        self.open_only = true;
        self
    }

    /// Sets the page size.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Continues after this id.
    pub fn with_after(mut self, after: impl Into<String>) -> Self {
        self.after = Some(after.into());
        self
    }
}

/// A page of thread ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadPage {
    /// The ids, in ascending byte order, without duplicates.
    pub ids: Vec<String>,
    /// The cursor for the next page, or `None` when this page reached the end.
    pub next: Option<String>,
}
