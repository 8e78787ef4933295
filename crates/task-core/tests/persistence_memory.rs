//! The persistence suite on `MemoryStore`.

mod common;

use std::sync::Arc;

use task_core::thread_store::ThreadStore;
use task_store_memory::MemoryStore;

async fn memory() -> Arc<dyn ThreadStore> {
    Arc::new(MemoryStore::new())
}

persistence_suite!(memory());
