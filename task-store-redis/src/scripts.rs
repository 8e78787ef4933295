//! The Lua scripts, from the `.lua` files beside this module. Each script's
//! source is the shared prelude (`lua/prelude.lua`: formatting, the
//! server's clock, calls in slices, type checks and the rules every write
//! shares) followed by the script's own file, whose header says what it
//! takes in `KEYS` and `ARGV` and what it returns.
//!
//! Every write is one script on the keys of one shard (one hash tag, one
//! slot): the threads' keys and the shard's indexes, so it runs unchanged
//! on a single node and on Redis Cluster. A
//! `create` is a `create_batch` of one and an `append` an `append_batch` of
//! one, so each rule of a write is written once. All data comes in through
//! `ARGV`, never into the source, so the scripts are loaded once and run by
//! SHA1.

use std::sync::LazyLock;

use redis::Script;

/// The source of a script: the prelude, then `lua/<file>`.
macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        )
    };
}

/// A script with its source, for loading it up front.
pub(crate) struct Lua {
    pub(crate) script: LazyLock<Script>,
    pub(crate) source: &'static str,
}

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub(crate) static $name: Lua = Lua {
                script: LazyLock::new(|| Script::new(lua!($file))),
                source: lua!($file),
            };
        )*

        /// Every script, for loading them up front (`SCRIPT LOAD`).
        pub(crate) fn all() -> impl Iterator<Item = &'static Lua> {
            [$(&$name),*].into_iter()
        }
    };
}

scripts! {
    /// `create_batch`, and `create` as a batch of one (`lua/create_batch.lua`).
    CREATE_BATCH = "create_batch.lua";
    /// `append_batch`, and `append` as a batch of one (`lua/append_batch.lua`).
    APPEND_BATCH = "append_batch.lua";
    /// `save` (`lua/save.lua`).
    SAVE = "save.lua";
    /// A page of a thread's log (`lua/read_log.lua`).
    READ_LOG = "read_log.lua";
    /// Deletes a thread with its index entries (`lua/delete.lua`).
    DELETE = "delete.lua";
    /// A page of one shard's index (`lua/list.lua`).
    LIST = "list.lua";
    /// Sweeps the index entries of expired threads of a shard (`lua/sweep.lua`).
    SWEEP = "sweep.lua";
}

impl std::ops::Deref for Lua {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.script
    }
}
