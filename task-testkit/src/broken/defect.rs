//! [`Defect`]: the catalogue of slips a [`SmallStore`](super::SmallStore)
//! can be made with, each with the conformance cases written to catch it.

macro_rules! defects {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident => [$($case:ident),* $(,)?],
    )*) => {
        /// One subtle defect of the kind a backend author makes, switched on
        /// in a [`SmallStore`](super::SmallStore).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Defect {
            $($(#[doc = $doc])* $name,)*
        }

        impl Defect {
            /// Every defect.
            pub const ALL: &'static [Defect] = &[$(Defect::$name),*];

            /// The defect's name: `"CheckThenCreate"`...
            pub fn name(self) -> &'static str {
                match self {
                    $(Defect::$name => ::std::stringify!($name),)*
                }
            }

            /// What is wrong, in words (its doc comment).
            pub fn description(self) -> &'static str {
                match self {
                    $(Defect::$name => ::std::concat!($($doc),*).trim_start(),)*
                }
            }

            /// The conformance cases written to catch it (others may too).
            pub fn caught_by(self) -> &'static [&'static str] {
                match self {
                    $(Defect::$name => &[$(::std::stringify!($case)),*],)*
                }
            }
        }
    };
}

defects! {

    /// Every `Exact(v)` precondition is silently treated as `Any`:
    /// concurrent compare-and-swap writers lose updates.
    IgnoresPreconditions => [
        append_with_a_stale_version_conflicts_and_changes_nothing,
        concurrent_exact_appends_have_exactly_one_winner,
        compare_and_swap_loops_lose_no_update,
        change_set_that_changes_nothing_keeps_the_version,
        append_batch_returns_one_result_per_request,
    ],

    /// A race between a check and a write: `create` checks that the id is
    /// free, lets go of the lock, and writes in a second step.
    CheckThenCreate => [
        concurrent_creates_have_exactly_one_winner,
    ],

    /// A race between a check and a write: `append` checks an `Exact`
    /// version, lets go of the lock, and writes in a second step.
    CheckThenAppend => [
        concurrent_exact_appends_have_exactly_one_winner,
        compare_and_swap_loops_lose_no_update,
    ],

    /// The version conflict reports the expected and actual versions the
    /// wrong way round.
    SwappedConflictVersions => [
        append_with_a_stale_version_conflicts_and_changes_nothing,
    ],

    /// An append whose change set is empty returns early, before checking
    /// its precondition.
    EmptyChangeSetSkipsPrecondition => [
        change_set_that_changes_nothing_keeps_the_version,
    ],

    /// Every append adds one to the version, even one that changes nothing.
    VersionBumpOnNoOp => [
        change_set_that_changes_nothing_keeps_the_version,
        every_kind_of_write_moves_the_version_by_one_or_not_at_all,
    ],

    /// `append` to a missing thread creates it (an upsert).
    AppendCreatesMissing => [
        append_to_a_missing_thread_is_not_found,
        refused_writes_leave_no_trace,
    ],

    /// Message ids are de-duplicated against the last 64 ids only.
    DedupeWindow => [
        message_ids_are_deduplicated_over_the_whole_history,
    ],

    /// Message ids are de-duplicated across the whole store, not per thread.
    DedupeAcrossThreads => [
        message_ids_are_scoped_to_their_thread,
    ],

    /// `delete` leaves the thread's set of message ids behind, so a thread
    /// created again under the id skips them.
    DeleteKeepsMessageIds => [
        deleted_thread_is_gone_from_loads_and_listings,
    ],

    /// An append records its message ids before checking its precondition,
    /// so a refused append still takes them.
    ConflictRecordsMessageIds => [
        refused_writes_leave_no_trace,
    ],

    /// Message ids are validated while they are written, so messages before
    /// an invalid one (and the new state) stay: a partial write.
    ValidatesMessagesWhileWriting => [
        invalid_message_ids_are_refused_and_nothing_written,
        refused_writes_leave_no_trace,
    ],

    /// Id validation refuses ASCII control characters only, letting C1
    /// controls (U+0080 to U+009F) through.
    AsciiOnlyControls => [
        invalid_thread_ids_are_refused_and_nothing_written,
        invalid_ids_are_refused_in_every_argument,
    ],

    /// Id validation counts characters instead of bytes.
    LengthInChars => [
        invalid_thread_ids_are_refused_and_nothing_written,
        invalid_ids_are_refused_in_every_argument,
    ],

    /// `save` with a new parent leaves the old parent's index entry.
    StaleParentIndexOnSave => [
        save_reindexes_when_parent_or_kind_changes,
        indexes_follow_every_write_then_delete,
    ],

    /// `delete` leaves the kind's index entry.
    KindIndexKeptOnDelete => [
        deleted_thread_is_gone_from_loads_and_listings,
        indexes_follow_every_write_then_delete,
    ],

    /// `save` over a thread leaves the open index as it was.
    OpenIndexIgnoresSave => [
        open_listing_follows_every_kind_of_write,
        open_indexes_follow_every_write_then_delete,
    ],

    /// A thread created already finished is put in the open index anyway.
    TerminalCreateListedOpen => [
        open_listing_follows_the_finished_mark,
    ],

    /// The parent index keys are `parent:id`, so the children of `p:` and
    /// `p:x` show up under `p`.
    PrefixParentIndex => [
        listings_keep_ids_that_are_prefixes_of_one_another_apart,
    ],

    /// `load_messages` returns `seq >= after` instead of `seq > after`.
    InclusiveMessageCursor => [
        message_pages_follow_cursors,
    ],

    /// A listing looks one id too far ahead: when exactly one id remains
    /// after a full page, it says there is no next page.
    LastPageOffByOne => [
        list_by_parent_pages_without_duplicates_or_gaps,
    ],

    /// `create_batch` checks every id against the store before creating any,
    /// so an id repeated in the batch is created twice, the second
    /// overwriting the first.
    BatchRepeatedIdOverwrites => [
        create_batch_with_a_repeated_id_creates_the_first,
    ],

    /// A batch stops at its first failed item and fails every later one
    /// with the same error, unapplied.
    StopsBatchAtFirstError => [
        append_batch_returns_one_result_per_request,
        create_batch_refuses_taken_and_invalid_items_alone,
    ],

    /// `load_messages` of a missing thread returns an empty page instead of
    /// `NotFound`.
    NotFoundAsEmptyPage => [
        load_of_a_missing_thread_finds_nothing,
    ],

    /// `signals()` offers signals that never wake anyone.
    SilentSignals => [
        signals_wake_every_watcher_of_their_channel,
    ],
}
