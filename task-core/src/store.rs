//! Opening a thread store from a URL.

use std::sync::Arc;

use task_store::{ThreadStore, ThreadStoreError};

/// Opens the thread store a URL names.
///
/// - `memory://` opens a new, empty in-process `MemoryStore`, always
///   (whatever the features; the `memory` feature re-exports the type).
/// - `redis://host:port/db?prefix=P` and `rediss://…` connect a
///   `RedisStore` (feature `redis`); see `task_store_redis` for the options.
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
                "store URL {url:?} has no scheme; expected memory:// or redis://host:port/db"
            ))
        })?;
    match scheme.as_str() {
        "memory" => open_memory(url),
        "redis" | "rediss" => open_redis(url).await,
        other => Err(ThreadStoreError::invalid_input(format!(
            "unknown store scheme {other:?} in {url:?}; expected memory:// or redis://"
        ))),
    }
}

/// `memory://` always opens, whatever the features: it is the embedded
/// default.
fn open_memory(_url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Ok(Arc::new(task_store_memory::MemoryStore::new()))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Ok(Arc::new(task_store_redis::RedisStore::connect(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    Err(feature_off("redis", url))
}

/// The error for a URL whose backend's feature is off. The URL is shown
/// without its credentials.
#[allow(dead_code)]
fn feature_off(feature: &str, url: &str) -> ThreadStoreError {
    ThreadStoreError::invalid_input(format!(
        "feature `{feature}` is not enabled for {}; enable task-core's `{feature}` feature",
        redacted(url)
    ))
}

/// A store URL with any user and password replaced by `…`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{}", &rest[authority_end..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted("rediss://user:secret@host:6380/1?prefix=p"),
            "rediss://…@host:6380/1?prefix=p"
        );
        assert_eq!(redacted("redis://:pw@h"), "redis://…@h");
        assert_eq!(redacted("nonsense"), "nonsense");
    }

    #[test]
    fn a_scheme_whose_feature_is_off_names_the_feature_once() {
        let message = feature_off("redis", "redis://:pw@localhost:6379/0").to_string();
        assert_eq!(
            message,
            "invalid input: feature `redis` is not enabled for redis://…@localhost:6379/0; \
             enable task-core's `redis` feature"
        );
    }
}
