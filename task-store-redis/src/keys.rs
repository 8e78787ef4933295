//! Key names: every key of the store lives under its prefix; a thread's key
//! and the indexes it is listed in share its shard's hash tag (one slot);
//! no id can move that tag or leave the prefix.

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

/// The number of hash slots of Redis Cluster.
const SLOTS: u32 = 16384;

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key's hash tag (the part between the first `{` and the next `}`,
/// when not empty) or of the whole key, modulo 16384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

/// The shard of a thread id among `shards`: FNV-1a (64 bits) of the id's
/// bytes, modulo the shard count. Part of the key layout: it must never
/// change for layout 2.
pub(crate) fn shard_of(id: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in id.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // `shards` is at most MAX_SHARDS, so the remainder fits.
    (hash % shards as u64) as usize
}

/// The most shards a store may have.
pub(crate) const MAX_SHARDS: usize = 1024;

/// The hash tag of shard `i` of `shards`: the first `i.j` (j = 0, 1, …)
/// whose hash slot lies in the `i`-th of `shards` equal parts of the slot
/// space. Redis Cluster gives each master a contiguous range of slots, so
/// the shards of a store spread over the masters as evenly as the slots.
fn shard_tag(i: usize, shards: usize) -> String {
    let lo = (i as u64 * u64::from(SLOTS) / shards as u64) as u16;
    let hi = ((i as u64 + 1) * u64::from(SLOTS) / shards as u64) as u16;
    (0u32..)
        .map(|j| format!("{i}.{j}"))
        .find(|tag| (lo..hi).contains(&key_slot(tag.as_bytes())))
        .unwrap_or_else(|| format!("{i}.0"))
}

/// The key names of one store (one prefix, one shard count).
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
    /// Per shard, the start of its keys: `P:{tag}`.
    bases: Vec<String>,
}

/// The five sorted sets of one shard, in the order every write script
/// takes them as `KEYS[1..5]`.
pub(crate) const INDEX_NAMES: [&str; 5] =
    ["kind", "parent", "open:kind", "open:parent", "expiring"];

impl KeySpace {
    /// The key space of `prefix` with `shards` shards (1 to [`MAX_SHARDS`]).
    pub(crate) fn new(prefix: String, shards: usize) -> Self {
        let shards = shards.clamp(1, MAX_SHARDS);
        let bases = (0..shards)
            .map(|i| format!("{prefix}:{{{}}}", shard_tag(i, shards)))
            .collect();
        Self { prefix, bases }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many shards the store has.
    pub(crate) fn shards(&self) -> usize {
        self.bases.len()
    }

    /// The shard a thread's keys are in.
    pub(crate) fn shard(&self, id: &str) -> usize {
        shard_of(id, self.bases.len())
    }

    /// The key of the layout record: which layout and how many shards.
    pub(crate) fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// The keys of layout 1, any of which shows a store of that layout.
    pub(crate) fn layout_one_markers(&self) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}:idx:all"),
            format!("{p}:idx:open:kind"),
            format!("{p}:idx:expiring"),
        ]
    }

    /// The start of the thread keys of a shard: `P:{tag}:t:`, followed by
    /// the encoded id.
    pub(crate) fn thread_prefix(&self, shard: usize) -> String {
        format!("{}:t:", self.bases[shard])
    }

    /// The one key of a thread: its head, log and message ids in one hash.
    pub(crate) fn thread(&self, id: &str) -> String {
        format!("{}:t:{}", self.bases[self.shard(id)], encode(id))
    }

    /// The five sorted sets of a shard, in [`INDEX_NAMES`] order.
    pub(crate) fn indexes(&self, shard: usize) -> [String; 5] {
        INDEX_NAMES.map(|name| format!("{}:{name}", self.bases[shard]))
    }

    /// One sorted set of a shard, by its name in [`INDEX_NAMES`].
    pub(crate) fn index(&self, shard: usize, name: &str) -> String {
        format!("{}:{name}", self.bases[shard])
    }

    /// The channel of a signal: `P:signal:` and the channel name, or with
    /// the encoded name as a hash tag for sharded pub/sub on a cluster.
    pub(crate) fn signal(&self, channel: &str, sharded: bool) -> String {
        if sharded {
            format!("{}:signal:{{{}}}", self.prefix, encode(channel))
        } else {
            format!("{}:signal:{channel}", self.prefix)
        }
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
    fn a_thread_has_one_key_with_its_shards_tag() {
        let space = KeySpace::new("p".into(), 1);
        assert_eq!(space.thread("x}{y"), "p:{0.0}:t:x%7D%7By");
        let key = space.thread("x}{y");
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        for index in space.indexes(0) {
            assert!(index.starts_with("p:{0.0}:"), "{index}");
            assert_eq!(key_slot(index.as_bytes()), key_slot(key.as_bytes()));
        }
    }

    #[test]
    fn key_slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 0x31C3); // below 16384, so the CRC itself
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        // The first tag counts; an empty one does not (the whole key is hashed).
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[test]
    fn shards_spread_evenly_over_the_slot_space() {
        let space = KeySpace::new("p".into(), 16);
        for shard in 0..16 {
            let slot = u32::from(key_slot(space.index(shard, "kind").as_bytes()));
            assert_eq!(slot * 16 / 16384, shard as u32, "shard {shard}");
        }
        let mut counts = [0usize; 16];
        for i in 0..16_000 {
            counts[space.shard(&format!("task-{i}"))] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
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
