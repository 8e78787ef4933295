//! Unit tests of the store's internals: indexes, retention and clones.

use super::*;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

#[test]
fn clones_share_the_same_data() {
    block_on(async {
        let store = MemoryStore::new();
        let clone = store.clone();
        store
            .create(Thread::new("a", "k"))
            .await
            .expect("create succeeds");
        let head = clone.load("a").await.expect("load succeeds");
        assert_eq!(head.map(|h| h.version), Some(1));
    });
}

#[test]
fn delete_drops_empty_index_entries() {
    block_on(async {
        let store = MemoryStore::new();
        store
            .create(Thread::new("a", "k").with_parent("p"))
            .await
            .expect("create succeeds");
        store.delete("a").await.expect("delete succeeds");
        let inner = store.lock();
        assert!(inner.by_parent.is_empty(), "{:?}", inner.by_parent);
        assert!(inner.by_kind.is_empty(), "{:?}", inner.by_kind);
    });
}

#[test]
fn save_moves_the_thread_between_index_entries() {
    block_on(async {
        let store = MemoryStore::new();
        store
            .create(Thread::new("a", "k1").with_parent("p1"))
            .await
            .expect("create succeeds");
        store
            .save(Thread::new("a", "k2").with_parent("p2"))
            .await
            .expect("save succeeds");
        let inner = store.lock();
        assert_eq!(inner.by_parent.keys().collect::<Vec<_>>(), ["p2"]);
        assert_eq!(inner.by_kind.keys().collect::<Vec<_>>(), ["k2"]);
    });
}

fn finished(id: &str) -> Thread {
    let mut thread = Thread::new(id, "task").with_parent("owner");
    thread.terminal = true;
    thread
}

#[tokio::test(start_paused = true)]
async fn retention_drops_finished_threads_after_their_age_and_keeps_open_ones() {
    let store = MemoryStore::with_options(
        MemoryStoreOptions::default().with_retention(Some(Duration::from_secs(60))),
    );
    store.create(finished("old")).await.expect("create");
    store
        .create(Thread::new("open", "task").with_parent("owner"))
        .await
        .expect("create");
    tokio::time::advance(Duration::from_secs(30)).await;
    store.create(finished("young")).await.expect("create");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(store.load("old").await.expect("load").is_none());
    assert!(store.load("young").await.expect("load").is_some());
    assert!(store.load("open").await.expect("load").is_some());
    let listed = store
        .list_threads(ThreadQuery::by_parent("owner"))
        .await
        .expect("list");
    assert_eq!(listed.ids, ["open", "young"]);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(store.len(), 1, "only the open thread stays");
    let inner = store.lock();
    assert_eq!(inner.retention.finished, 0);
    assert!(inner.retention.queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn retention_by_count_drops_the_longest_finished_first() {
    let store = MemoryStore::with_options(MemoryStoreOptions::default().with_max_finished(Some(2)));
    for id in ["a", "b", "c"] {
        store.create(Thread::new(id, "task")).await.expect("create");
    }
    // Finished in the order c, a, b: c goes first.
    for id in ["c", "a", "b"] {
        store
            .append(
                id,
                ChangeSet::default().with_terminal(true),
                VersionPrecondition::Any,
            )
            .await
            .expect("finish");
    }
    assert!(store.load("c").await.expect("load").is_none());
    assert_eq!(store.len(), 2);
    // Reopening one takes it out of the count; finishing it again puts it
    // at the back of the queue.
    store
        .append(
            "a",
            ChangeSet::default().with_terminal(false),
            VersionPrecondition::Any,
        )
        .await
        .expect("reopen");
    store.create(finished("d")).await.expect("create");
    assert_eq!(store.len(), 3, "b and d finished, a open");
    store
        .append(
            "a",
            ChangeSet::default().with_terminal(true),
            VersionPrecondition::Any,
        )
        .await
        .expect("finish again");
    assert!(
        store.load("b").await.expect("load").is_none(),
        "b finished first"
    );
    assert_eq!(store.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_of_finished_threads_stays_bounded() {
    let store = MemoryStore::with_options(
        MemoryStoreOptions::default()
            .with_retention(Some(Duration::from_secs(10)))
            .with_max_finished(Some(1_000)),
    );
    for i in 0..20_000u32 {
        let id = format!("t{i}");
        store
            .create(Thread::new(&id, "task").with_parent("owner"))
            .await
            .expect("create");
        store
            .append(
                &id,
                ChangeSet::default().with_terminal(true),
                VersionPrecondition::Exact(1),
            )
            .await
            .expect("finish");
        if i % 100 == 0 {
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        assert!(store.len() <= 1_000, "{} threads after {i}", store.len());
    }
    let inner = store.lock();
    assert!(inner.retention.queue.len() <= 1_000);
    assert!(inner.open.all.is_empty());
}

#[test]
fn debug_shows_the_thread_count_not_the_data() {
    let store = MemoryStore::new();
    assert_eq!(format!("{store:?}"), "MemoryStore { threads: 0, .. }");
}
