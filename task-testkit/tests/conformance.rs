//! `FlakyStore` with an empty fault plan, over `MemoryStore`, passes the
//! backend conformance suite: the wrapper forwards every call faithfully.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_memory::MemoryStore;
use task_testkit::FlakyStore;

async fn make_store() -> Arc<dyn ThreadStore> {
    Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())))
}

task_testkit::conformance_tests!(make_store());
