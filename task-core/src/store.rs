//! Opening a thread store from a URL.

use std::sync::Arc;

use task_store::{ThreadStore, ThreadStoreError};

/// Opens the thread store a URL names.
///
/// - `memory://` opens a new, empty in-process [`MemoryStore`](crate::MemoryStore)
///   (feature `memory`, on by default).
/// - `redis://host:port/db?prefix=P` and `rediss://…` connect a
///   `RedisStore` (feature `redis`); see `task_store_redis` for the options.
/// - `postgres://user@host:port/db?schema=S` and `postgresql://…` connect a
///   `PostgresStore` (feature `postgres`), creating or migrating its schema;
///   see `task_store_postgres` for the options.
///
/// # Errors
///
/// `InvalidInput` for a URL this build cannot open: an unknown scheme, or a
/// scheme whose feature is not enabled (the message names the feature);
/// the backend's errors when connecting fails.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), task_store::ThreadStoreError> {
/// let store = task_core::store::open("memory://").await?;
/// let tasks = task_core::TaskStore::new(store);
/// # let _ = tasks;
/// # Ok(())
/// # }
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .ok_or_else(|| {
            ThreadStoreError::invalid_input(format!(
                "store URL {url:?} has no scheme; expected memory://, redis://host:port/db or \
                 postgres://user@host:port/db"
            ))
        })?;
    match scheme.as_str() {
        "memory" => open_memory(url),
        "redis" | "rediss" => open_redis(url).await,
        "postgres" | "postgresql" => open_postgres(url).await,
        other => Err(ThreadStoreError::invalid_input(format!(
            "unknown store scheme {other:?} in {url:?}; expected memory://, redis:// or postgres://"
        ))),
    }
}

#[cfg(feature = "memory")]
fn open_memory(_url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Ok(Arc::new(task_store_memory::MemoryStore::new()))
}

#[cfg(not(feature = "memory"))]
fn open_memory(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Err(ThreadStoreError::invalid_input(format!(
        "feature `memory` is not enabled for {url}"
    )))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Ok(Arc::new(task_store_redis::RedisStore::connect(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Err(feature_off("redis", url))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Ok(Arc::new(
        task_store_postgres::PostgresStore::connect(url).await?,
    ))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Err(feature_off("postgres", url))
}

/// The error for a URL whose backend's feature is off; it names the feature
/// and leaves the credentials out.
#[cfg(any(not(feature = "redis"), not(feature = "postgres")))]
fn feature_off(feature: &str, url: &str) -> ThreadStoreError {
    let shown = url.split_once('@').map_or(url, |(_, host)| host);
    ThreadStoreError::invalid_input(format!(
        "feature `{feature}` is not enabled for {}://…{shown}; enable task-core's `{feature}` \
         feature",
        url.split("://").next().unwrap_or(feature)
    ))
}
