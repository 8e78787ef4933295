//! Listing threads: one script per shard on the shard's index, the lists
//! merged here.

use futures_util::future::join_all;
use redis::Value;
use task_store::{Result, ThreadPage, ThreadQuery, ThreadStoreError, effective_limit};

use crate::conn::Invocation;
use crate::scripts;
use crate::store::RedisStore;

impl RedisStore {
    /// `list_threads`, after the query was validated: a page of the index
    /// of the query's parent and kind (or of open threads) in every shard,
    /// merged in id order. Every write keeps the indexes exact in the same
    /// script; only retention leaves entries of expired threads behind,
    /// which the listing skips and removes.
    pub(crate) async fn list(&self, query: ThreadQuery) -> Result<ThreadPage> {
        let keys = &self.inner.keys;
        let limit = effective_limit(query.limit);
        let by_parent = query.parent_id.is_some();
        let name = match (query.open_only, by_parent) {
            (false, false) => "kind",
            (false, true) => "parent",
            (true, false) => "open:kind",
            (true, true) => "open:parent",
        };
        let (prefix, mode) = match (&query.parent_id, &query.kind) {
            (Some(parent), Some(kind)) => (format!("{parent}\0{kind}\0"), "flat"),
            (Some(parent), None) => (format!("{parent}\0"), "kinds"),
            (None, Some(kind)) => (format!("{kind}\0"), "flat"),
            (None, None) => (String::new(), "kinds"),
        };
        let after = query.after.clone().unwrap_or_default();
        let invocations: Vec<Invocation> = (0..keys.shards())
            .map(|shard| {
                Invocation::new(&scripts::LIST)
                    .key(keys.index(shard, name))
                    .arg(prefix.as_str())
                    .arg(mode)
                    .arg(after.as_str())
                    .arg((limit + 1).to_string())
                    .arg(if query.open_only {
                        String::new()
                    } else {
                        keys.thread_prefix(shard)
                    })
                    .arg(if by_parent { "parent" } else { "kind" })
            })
            .collect();
        let replies = join_all(
            invocations
                .iter()
                .map(|invocation| self.inner.conn.invoke(invocation, None)),
        )
        .await;
        let mut ids = Vec::new();
        for (invocation, reply) in invocations.iter().zip(replies) {
            let index = &invocation.keys[0];
            let lists = match reply? {
                Value::Array(lists) => lists,
                other => return Err(odd_listing(index, &other)),
            };
            for list in lists {
                let Value::Array(members) = list else {
                    return Err(odd_listing(index, &list));
                };
                for member in members {
                    let Value::BulkString(bytes) = member else {
                        return Err(odd_listing(index, &member));
                    };
                    ids.push(String::from_utf8(bytes).map_err(|err| {
                        ThreadStoreError::Backend {
                            message: format!("the index {index} holds an id that is not UTF-8"),
                            source: Some(std::sync::Arc::new(err)),
                        }
                    })?);
                }
            }
        }
        Ok(page_of(ids, limit))
    }
}

fn odd_listing(index: &str, what: &Value) -> ThreadStoreError {
    ThreadStoreError::backend(format!(
        "unexpected answer from the listing of {index}: {what:?}"
    ))
}

/// The page of the first `limit` of `ids` (in any order, without
/// duplicates), with a cursor when there were more.
fn page_of(mut ids: Vec<String>, limit: usize) -> ThreadPage {
    ids.sort_unstable();
    let next = if ids.len() > limit {
        ids.truncate(limit);
        ids.last().cloned()
    } else {
        None
    };
    ThreadPage { ids, next }
}
