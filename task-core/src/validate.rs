//! The limits of what a caller may hand the manager, checked at the boundary
//! so that whatever is accepted round-trips exactly through every store and
//! every reader, and whatever cannot is refused with an error that names the
//! field and its real limit.

use serde_json::Value;

use crate::TaskError;

/// The longest task id accepted, in bytes. Shorter than the store's id limit
/// because the task's thread id is `task:<id>`.
pub const MAX_TASK_ID_LEN: usize = 200;

/// The longest owner id or task type accepted, in bytes.
pub const MAX_NAME_LEN: usize = task_store::MAX_ID_LEN;

/// The longest description accepted, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 16 * 1024;

/// The largest metadata accepted, in bytes of its JSON encoding.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// The deepest nesting of arrays and objects accepted in metadata, a task's
/// result, its output and its progress. JSON parsers refuse documents nested
/// much deeper (serde_json stops at 128 levels), and the stores keep these
/// values inside their own documents, so the limit leaves room for that
/// wrapping: every value within it reads back exactly, from every store.
pub const MAX_JSON_DEPTH: usize = 64;

/// Checks a task id: non-empty, at most [`MAX_TASK_ID_LEN`] bytes, no
/// control characters. `field` names it in the error (`task_id`,
/// `parent_task_id`).
pub(crate) fn task_id(field: &str, id: &str) -> Result<(), TaskError> {
    // The task's own limit first: it is the stricter one, and the one to name.
    if id.len() > MAX_TASK_ID_LEN {
        return Err(invalid(format!(
            "{field} is {} bytes long; the limit is {MAX_TASK_ID_LEN}",
            id.len()
        )));
    }
    task_store::validate_id(field, id).map_err(TaskError::from_validation)
}

/// Checks an owner id or a task type with the store's id rules (at most
/// [`MAX_NAME_LEN`] bytes). `field` names it in the error.
pub(crate) fn name(field: &str, value: &str) -> Result<(), TaskError> {
    task_store::validate_id(field, value).map_err(TaskError::from_validation)
}

/// Checks an owner id.
pub(crate) fn owner(owner: &str) -> Result<(), TaskError> {
    name("owner_thread_id", owner)
}

/// Checks a task type.
pub(crate) fn task_type(task_type: &str) -> Result<(), TaskError> {
    name("task_type", task_type)
}

/// Checks a description's length.
pub(crate) fn description(description: &str) -> Result<(), TaskError> {
    if description.len() > MAX_DESCRIPTION_LEN {
        return Err(invalid(format!(
            "description is {} bytes long; the limit is {MAX_DESCRIPTION_LEN}",
            description.len()
        )));
    }
    Ok(())
}

/// Checks that `value` is nested at most [`MAX_JSON_DEPTH`] deep. `field`
/// names it in the error.
pub(crate) fn json_depth(field: &str, value: &Value) -> Result<(), TaskError> {
    match depth_over(value, MAX_JSON_DEPTH) {
        false => Ok(()),
        true => Err(invalid(format!(
            "{field} is nested more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH}"
        ))),
    }
}

/// Whether `value` nests arrays and objects more than `limit` deep. Walks
/// with an explicit stack, so a hostile value cannot overflow ours.
fn depth_over(value: &Value, limit: usize) -> bool {
    // Only arrays and objects nest: a scalar (the common result) costs no
    // allocation, and only containers go on the stack.
    fn nests(value: &Value) -> bool {
        matches!(value, Value::Array(_) | Value::Object(_))
    }
    if !nests(value) {
        return false;
    }
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        if depth + 1 > limit {
            return true;
        }
        match value {
            Value::Array(items) => {
                stack.extend(items.iter().filter(|c| nests(c)).map(|c| (c, depth + 1)));
            }
            Value::Object(map) => {
                stack.extend(map.values().filter(|c| nests(c)).map(|c| (c, depth + 1)));
            }
            _ => {}
        }
    }
    false
}

/// Checks metadata: nesting, then size. Returns it as the JSON text its size
/// was measured on (`None` for `null`).
pub(crate) fn metadata(metadata: &Value) -> Result<Option<Box<str>>, TaskError> {
    if metadata.is_null() {
        return Ok(None);
    }
    json_depth("metadata", metadata)?;
    let text = serde_json::to_string(metadata)
        .map_err(|e| invalid(format!("metadata cannot be encoded as JSON: {e}")))?;
    if text.len() > MAX_METADATA_BYTES {
        return Err(invalid(format!(
            "metadata is {} bytes encoded; the limit is {MAX_METADATA_BYTES}",
            text.len()
        )));
    }
    Ok(Some(text.into_boxed_str()))
}

/// The caller-supplied fields of a task, checked together before anything
/// is changed. Returns the metadata as JSON text (see [`metadata`]).
pub(crate) struct TaskInput<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) task_type: &'a str,
    pub(crate) description: &'a str,
    pub(crate) parent_task_id: Option<&'a str>,
    pub(crate) metadata: &'a Value,
}

impl TaskInput<'_> {
    pub(crate) fn check(&self) -> Result<Option<Box<str>>, TaskError> {
        task_id("task_id", self.task_id)?;
        owner(self.owner)?;
        task_type(self.task_type)?;
        if let Some(parent) = self.parent_task_id {
            task_id("parent_task_id", parent)?;
        }
        description(self.description)?;
        metadata(self.metadata)
    }
}

fn invalid(reason: String) -> TaskError {
    TaskError::InvalidInput { reason }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!([value]);
        }
        value
    }

    #[test]
    fn depth_counts_arrays_and_objects_and_stops_at_the_limit() {
        assert!(json_depth("v", &nested(MAX_JSON_DEPTH)).is_ok());
        let err = json_depth("result", &nested(MAX_JSON_DEPTH + 1)).expect_err("too deep");
        assert!(err.to_string().contains("result"), "{err}");
        assert!(err.to_string().contains("64"), "{err}");
        assert!(json_depth("v", &json!({"a": {"b": [1, 2, {"c": null}]}})).is_ok());
        // A value far deeper than serde_json's recursion limit is refused by
        // a walk that does not recurse.
        assert!(json_depth("v", &nested(1_000)).is_err());
    }

    #[test]
    fn every_refusal_names_its_field_and_its_real_limit() {
        let long = "x".repeat(100_000);
        let err = task_id("task_id", &long).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "invalid input: task_id is 100000 bytes long; the limit is 200"
        );
        let err = TaskInput {
            task_id: "t",
            owner: "o",
            task_type: "k",
            description: "",
            parent_task_id: Some("bad\nparent"),
            metadata: &Value::Null,
        }
        .check()
        .expect_err("bad parent");
        assert!(err.to_string().contains("parent_task_id"), "{err}");
        let err = owner(&long).expect_err("too long");
        assert!(err.to_string().contains("owner_thread_id"), "{err}");
        assert!(err.to_string().contains("256"), "{err}");
        let err = task_type("").expect_err("empty");
        assert!(err.to_string().contains("task_type"), "{err}");
    }
}
