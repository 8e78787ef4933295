//! `MemoryStore` passes the backend conformance suite of `task-testkit`.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_memory::MemoryStore;

task_testkit::conformance_tests!(async { Arc::new(MemoryStore::new()) as Arc<dyn ThreadStore> });
