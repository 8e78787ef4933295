//! Opening a thread store from a URL.

use std::sync::Arc;
use std::time::Duration;

use task_store::{ThreadStore, ThreadStoreError};

/// Opens the thread store a URL names.
///
/// - `memory://` opens a new, empty in-process `MemoryStore`, always
///   (whatever the features; the `memory` feature re-exports the type).
///   It keeps finished records for a long-running process's sake: by
///   default a finished task record is dropped 24 hours after it finished,
///   and at most 100,000 finished records are kept (the oldest go first;
///   running and resumable records are never dropped). Change it with
///   `memory://?retention=1h&max_finished=10000`; `none` lifts a limit
///   (`memory://?retention=none&max_finished=none` keeps everything).
///   Durations are a number with `ms`, `s`, `m`, `h` or `d`. Any other
///   parameter is refused.
/// - `redis://host:port/db?prefix=P`, `rediss://…` and `redis+unix:///path`
///   connect a `RedisStore` (feature `redis`) to one server;
///   `redis+cluster://host:port,host:port/?prefix=P` (or
///   `rediss+cluster://…`) to a Redis Cluster through the given seed nodes.
///   See `task_store_redis` for the options.
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
        "redis" | "rediss" | "redis+unix" | "redis+cluster" | "rediss+cluster" => {
            open_redis(url).await
        }
        "postgres" | "postgresql" => open_postgres(url).await,
        other => Err(ThreadStoreError::invalid_input(format!(
            "unknown store scheme {other:?} in {url:?}; expected memory://, redis:// or postgres://"
        ))),
    }
}

/// The retention of `memory://` when the URL does not say.
const MEMORY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The count limit of finished records of `memory://` when the URL does not
/// say.
const MEMORY_MAX_FINISHED: usize = 100_000;

/// `memory://` always opens, whatever the features: it is the embedded
/// default.
fn open_memory(url: &str) -> Result<Arc<dyn ThreadStore>, ThreadStoreError> {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (host, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !host.trim_end_matches('/').is_empty() {
        return Err(ThreadStoreError::invalid_input(format!(
            "memory:// takes no host or path (got {host:?}); write memory:// or memory://?retention=1h"
        )));
    }
    let mut options = task_store_memory::MemoryStoreOptions::default()
        .with_retention(Some(MEMORY_RETENTION))
        .with_max_finished(Some(MEMORY_MAX_FINISHED));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "retention" => {
                options = options.with_retention(none_or(value, parse_duration)?);
            }
            "max_finished" => {
                options = options.with_max_finished(none_or(value, |v| {
                    v.parse::<usize>().map_err(|_| {
                        ThreadStoreError::invalid_input(format!(
                            "max_finished={v:?} is not a whole number (or none)"
                        ))
                    })
                })?);
            }
            other => {
                return Err(ThreadStoreError::invalid_input(format!(
                    "unknown parameter {other:?} in {url:?}; memory:// takes retention and max_finished"
                )));
            }
        }
    }
    Ok(Arc::new(task_store_memory::MemoryStore::with_options(
        options,
    )))
}

/// `none` as `None`, anything else parsed.
fn none_or<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, ThreadStoreError>,
) -> Result<Option<T>, ThreadStoreError> {
    if value.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

/// A duration written as a whole number with a unit: `250ms`, `30s`, `15m`,
/// `24h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, ThreadStoreError> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let n: u64 = digits.parse().map_err(|_| {
        ThreadStoreError::invalid_input(format!(
            "{text:?} is not a duration; write a whole number with ms, s, m, h or d (e.g. 24h)"
        ))
    })?;
    let seconds = |factor: u64| Duration::from_secs(n.saturating_mul(factor));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(ThreadStoreError::invalid_input(format!(
            "{text:?} has no known unit; write a whole number with ms, s, m, h or d (e.g. 24h)"
        ))),
    }
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
    fn durations_are_written_with_a_unit() {
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("7d").ok(),
            Some(Duration::from_secs(7 * 86_400))
        );
        for bad in ["", "7", "h", "1.5h", "3 weeks", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// A finished thread of `memory://`, to age and count out.
    fn finished(id: &str) -> task_store::Thread {
        let mut thread = task_store::Thread::new(id, "task");
        thread.terminal = true;
        thread
    }

    /// The embedded default keeps a day of finished records, as documented.
    #[tokio::test(start_paused = true)]
    async fn the_memory_default_keeps_finished_records_for_a_day() {
        let store = open("memory://").await.expect("opens");
        store.create(finished("old")).await.expect("create");
        tokio::time::advance(MEMORY_RETENTION - Duration::from_secs(60)).await;
        store.create(finished("newer")).await.expect("create");
        assert!(store.load("old").await.expect("load").is_some());
        tokio::time::advance(Duration::from_secs(120)).await;
        store.create(finished("newest")).await.expect("create");
        assert!(
            store.load("old").await.expect("load").is_none(),
            "a day old"
        );
        assert!(store.load("newer").await.expect("load").is_some());
    }

    /// The embedded default keeps at most 100,000 finished records: the
    /// oldest goes first.
    #[tokio::test]
    async fn the_memory_default_keeps_at_most_its_count_of_finished_records() {
        let store = open("memory://").await.expect("opens");
        for chunk in 0..=MEMORY_MAX_FINISHED / 1_000 {
            let threads: Vec<_> = (0..1_000)
                .map(|i| chunk * 1_000 + i)
                .take_while(|n| *n <= MEMORY_MAX_FINISHED)
                .map(|n| finished(&format!("t{n}")))
                .collect();
            for created in store.create_batch(threads).await {
                created.expect("create");
            }
        }
        assert!(
            store.load("t0").await.expect("load").is_none(),
            "the oldest went"
        );
        assert!(store.load("t1").await.expect("load").is_some());
        assert!(
            store
                .load(&format!("t{MEMORY_MAX_FINISHED}"))
                .await
                .expect("load")
                .is_some()
        );
    }

    #[tokio::test]
    async fn memory_urls_set_retention_and_refuse_unknown_parameters() {
        assert!(open("memory://").await.is_ok());
        assert!(open("memory://?retention=1h&max_finished=10").await.is_ok());
        assert!(
            open("memory://?retention=none&max_finished=none")
                .await
                .is_ok()
        );
        for (url, says) in [
            ("memory://?retension=1h", "retension"),
            ("memory://?retention=forever", "forever"),
            ("memory://?max_finished=-1", "max_finished"),
            ("memory://somewhere", "no host"),
        ] {
            let err = open(url).await.expect_err("refused");
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }

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
