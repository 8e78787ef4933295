//! Key names: every key of the store lives under its prefix, every key of one
//! thread shares one hash tag, and no id can move that tag or leave the prefix.

use task_store::ThreadStoreError;

/// The bytes that are percent-encoded in a key component: `%` (the escape
/// itself), the hash-tag braces, the glob characters of `SCAN MATCH` and ACL
/// key patterns, and `:` (the separator between key components).
const ESCAPED: &[u8] = b"%{}*?[]\\:";

/// Percent-encodes the bytes of [`ESCAPED`] in `id`; every other byte is kept
/// as it is. The encoding is injective (`%` is itself escaped), so two ids
/// never share a key, and an encoded id holds none of `{}*?[]\:`.
pub(crate) fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_ascii() && ESCAPED.contains(&(c as u8)) {
            out.push_str(&format!("%{:02X}", c as u8));
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks a key prefix: non-empty, printable, without braces (they would take
/// the hash tag away from the thread ids), glob characters (they would widen
/// `SCAN` and ACL patterns) or whitespace.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), ThreadStoreError> {
    if prefix.is_empty() {
        return Err(ThreadStoreError::invalid_input(
            "the Redis key prefix must not be empty",
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "{}*?[]\\%".contains(*c))
    {
        return Err(ThreadStoreError::invalid_input(format!(
            "the Redis key prefix {prefix:?} contains {c:?}; \
             braces, glob characters, '%', whitespace and control characters are not allowed"
        )));
    }
    Ok(())
}

/// The key names of one store (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
}

/// The three keys of one thread, all in the hash tag of its encoded id.
#[derive(Debug, Clone)]
pub(crate) struct ThreadKeys {
    /// The head: a hash of version, last sequence number, kind, parent,
    /// metadata, state and finished mark.
    pub(crate) head: String,
    /// The log: a hash from sequence number to message.
    pub(crate) log: String,
    /// The message ids already in the log: a hash from message id to sequence number.
    pub(crate) mids: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: String) -> Self {
        Self { prefix }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn thread(&self, id: &str) -> ThreadKeys {
        let tag = format!("{}:{{{}}}", self.prefix, encode(id));
        ThreadKeys {
            head: format!("{tag}:head"),
            log: format!("{tag}:log"),
            mids: format!("{tag}:mids"),
        }
    }

    pub(crate) fn head(&self, id: &str) -> String {
        format!("{}:{{{}}}:head", self.prefix, encode(id))
    }

    /// Every thread of the store.
    pub(crate) fn idx_all(&self) -> String {
        format!("{}:idx:all", self.prefix)
    }

    /// Finished threads with a retention TTL, scored by the time they expire
    /// (ms), as `id\nkind\nparent`, for sweeping their index entries.
    pub(crate) fn expiring(&self) -> String {
        format!("{}:idx:expiring", self.prefix)
    }

    /// The open threads, as `kind\0id`.
    pub(crate) fn open_by_kind(&self) -> String {
        format!("{}:idx:open:kind", self.prefix)
    }

    /// The open threads with a parent, as `parent\0kind\0id`.
    pub(crate) fn open_by_parent(&self) -> String {
        format!("{}:idx:open:parent", self.prefix)
    }

    /// The keys every write script takes first: the expiry set and the open
    /// index (by kind, by parent).
    pub(crate) fn shared(&self) -> [String; 3] {
        [self.expiring(), self.open_by_kind(), self.open_by_parent()]
    }

    /// The threads of one kind.
    pub(crate) fn idx_kind(&self, kind: &str) -> String {
        format!("{}:idx:kind:{}", self.prefix, encode(kind))
    }

    /// The threads of one parent.
    pub(crate) fn idx_parent(&self, parent: &str) -> String {
        format!("{}:idx:parent:{}", self.prefix, encode(parent))
    }

    /// The threads of one parent and one kind.
    pub(crate) fn idx_parent_kind(&self, parent: &str, kind: &str) -> String {
        format!("{}:idx:pk:{}:{}", self.prefix, encode(parent), encode(kind))
    }

    /// The index keys a thread of this kind and parent is listed in, in the
    /// order the write script expects them: all, kind, then parent and
    /// parent+kind when there is a parent.
    pub(crate) fn indexes_of(&self, kind: &str, parent: Option<&str>) -> Vec<String> {
        let mut keys = vec![self.idx_all(), self.idx_kind(kind)];
        if let Some(parent) = parent {
            keys.push(self.idx_parent(parent));
            keys.push(self.idx_parent_kind(parent, kind));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_removes_every_special_byte_and_is_injective() {
        let nasty = "a{b}c*d?e[f]g\\h%i:j ü";
        let encoded = encode(nasty);
        assert_eq!(encoded, "a%7Bb%7Dc%2Ad%3Fe%5Bf%5Dg%5Ch%25i%3Aj ü");
        assert!(!encoded.contains(['{', '}', '*', '?', '[', ']', '\\', ':']));
        // '%' is escaped, so a literal escape sequence cannot collide.
        assert_ne!(encode("%7B"), encode("{"));
        assert_ne!(encode("a:b"), encode("a%3Ab"));
    }

    #[test]
    fn thread_keys_share_exactly_one_hash_tag() {
        let keys = KeySpace::new("p".into()).thread("x}{y");
        assert_eq!(keys.head, "p:{x%7D%7By}:head");
        for key in [&keys.head, &keys.log, &keys.mids] {
            assert_eq!(key.matches('{').count(), 1, "{key}");
            assert_eq!(key.matches('}').count(), 1, "{key}");
            assert!(key.starts_with("p:{x%7D%7By}:"), "{key}");
        }
    }

    #[test]
    fn parent_and_kind_cannot_be_confused_in_the_combined_index() {
        let space = KeySpace::new("p".into());
        assert_ne!(
            space.idx_parent_kind("a:b", "c"),
            space.idx_parent_kind("a", "b:c")
        );
    }

    #[test]
    fn prefixes_with_tag_or_glob_characters_are_refused() {
        assert!(validate_prefix("bgtask").is_ok());
        assert!(validate_prefix("app:tasks-1").is_ok());
        for bad in [
            "", "a{b", "a}", "a*", "a?", "a[", "a]", "a\\", "a b", "a%", "a\n",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
