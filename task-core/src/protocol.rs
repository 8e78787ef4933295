//! The cross-process protocol, typed in one place: the thread ids the task
//! layer uses, the instance record (a manager's lease and inbox), and the
//! messages one instance sends another. Everything that crosses a process
//! boundary is written and read through these types, never as loose JSON.
//!
//! | thread | kind | state | log |
//! |---|---|---|---|
//! | `task:<task id>` | `task` | the [`TaskRecord`](crate::TaskRecord) | the task's audit trail and output (see `records`) |
//! | `instance:<instance id>` | `instance` | an [`InstanceRecord`] | the instance's inbox of [`InboxMessage`]s |

use serde::{Deserialize, Serialize};
use serde_json::Value;
use task_store::{Message, NewMessage};

/// The thread kind of task records.
pub const TASK_KIND: &str = "task";

/// The thread kind of instance records.
pub(crate) const INSTANCE_KIND: &str = "instance";

const TASK_PREFIX: &str = "task:";
const INSTANCE_PREFIX: &str = "instance:";

/// The id of the thread that holds task `task_id`: `task:<task_id>`.
pub(crate) fn task_thread(task_id: &str) -> String {
    let mut id = String::with_capacity(TASK_PREFIX.len() + task_id.len());
    id.push_str(TASK_PREFIX);
    id.push_str(task_id);
    id
}

/// The task id of a task thread's id; `None` for any other thread.
pub(crate) fn task_of_thread(thread_id: &str) -> Option<&str> {
    thread_id.strip_prefix(TASK_PREFIX)
}

/// The id of the thread that holds instance `instance_id`'s lease and inbox.
pub(crate) fn instance_thread(instance_id: &str) -> String {
    format!("{INSTANCE_PREFIX}{instance_id}")
}

/// The instance id of an instance thread's id; `None` for any other thread.
pub(crate) fn instance_of_thread(thread_id: &str) -> Option<&str> {
    thread_id.strip_prefix(INSTANCE_PREFIX)
}

/// The state of an instance thread: the one lease record a manager renews
/// for all the tasks it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    /// The instance.
    pub(crate) instance_id: String,
    /// Until when every lease this instance holds is alive (ms since the
    /// Unix epoch); 0 once it has released them.
    pub(crate) expires_at_ms: u64,
    /// When it last renewed.
    pub(crate) renewed_at_ms: u64,
}

impl InstanceRecord {
    /// Reads an instance thread's state. A record that does not parse (not
    /// written by this protocol) counts as expired: nobody renews it.
    pub(crate) fn decode(state: Value) -> Option<Self> {
        serde_json::from_value(state).ok()
    }

    pub(crate) fn encode(&self) -> Value {
        // Plain fields: the encoding cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A request one instance sends another through its inbox (the log of the
/// receiver's instance thread).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum InboxMessage {
    /// Cancel the running attempt `attempt` of `task_id`, whose start was
    /// `run_id` (so a request meant for an earlier life of the receiver, or
    /// an earlier start of the task, is ignored).
    Cancel {
        task_id: String,
        attempt: u32,
        run_id: Option<String>,
        /// The instance that asked.
        from: String,
    },
}

impl InboxMessage {
    /// The message to append: its id makes a repeated request a no-op.
    pub(crate) fn to_message(&self) -> NewMessage {
        let id = match self {
            Self::Cancel {
                task_id, attempt, ..
            } => format!("cancel:{task_id}:{attempt}"),
        };
        // Plain fields: the encoding cannot fail.
        NewMessage::with_id(id, serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// Reads a message of an inbox; `None` for anything this protocol does
    /// not know (a newer peer's request is skipped, not fatal).
    pub(crate) fn decode(message: &Message) -> Option<Self> {
        serde_json::from_value(message.body.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids_round_trip() {
        assert_eq!(task_thread("abc"), "task:abc");
        assert_eq!(task_of_thread("task:abc"), Some("abc"));
        assert_eq!(task_of_thread("instance:abc"), None);
        assert_eq!(instance_of_thread(&instance_thread("w-1")), Some("w-1"));
    }

    #[test]
    fn inbox_messages_round_trip_and_unknown_ones_are_skipped() {
        let cancel = InboxMessage::Cancel {
            task_id: "t".into(),
            attempt: 2,
            run_id: Some("r".into()),
            from: "w".into(),
        };
        let message = cancel.to_message();
        assert_eq!(message.id.as_deref(), Some("cancel:t:2"));
        let stored = Message {
            seq: 1,
            id: message.id,
            body: message.body,
        };
        assert_eq!(InboxMessage::decode(&stored), Some(cancel));
        let unknown = Message {
            seq: 2,
            id: None,
            body: serde_json::json!({ "type": "hello" }),
        };
        assert_eq!(InboxMessage::decode(&unknown), None);
    }
}
