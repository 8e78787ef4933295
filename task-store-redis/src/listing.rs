//! Listing threads from the indexes, and pruning the entries of threads
//! that are gone.

use redis::Value;
use task_store::{Result, ThreadPage, ThreadQuery, ThreadStoreError, effective_limit};

use crate::conn::Invocation;
use crate::error::RedisFailure;
use crate::scripts;
use crate::store::RedisStore;

impl RedisStore {
    /// `list_threads`, after the query was validated: pages through the
    /// index of the query's parent and kind, checking each entry against its
    /// head and pruning those of threads that are gone.
    pub(crate) async fn list(&self, query: ThreadQuery) -> Result<ThreadPage> {
        if query.open_only {
            return self.list_open(query).await;
        }
        let keys = &self.inner.keys;
        let limit = effective_limit(query.limit);
        let (index, want_kind, want_parent) = match (&query.parent_id, &query.kind) {
            (Some(parent), Some(kind)) => (
                keys.idx_parent_kind(parent, kind),
                Some(kind.as_str()),
                Some(parent.as_str()),
            ),
            (Some(parent), None) => (keys.idx_parent(parent), None, Some(parent.as_str())),
            (None, Some(kind)) => (keys.idx_kind(kind), Some(kind.as_str()), None),
            (None, None) => (keys.idx_all(), None, None),
        };

        let mut live: Vec<String> = Vec::with_capacity(limit + 1);
        let mut cursor = query.after.clone();
        let mut conn = self.inner.conn.manager.clone();
        while live.len() <= limit {
            let want = limit + 1 - live.len();
            let min = match &cursor {
                Some(after) => {
                    let mut min = b"(".to_vec();
                    min.extend_from_slice(after.as_bytes());
                    min
                }
                None => b"-".to_vec(),
            };
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYLEX")
                .arg(&index)
                .arg(min)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(want)
                .query_async(&mut conn)
                .await
                .map_err(RedisFailure::general)?;
            let exhausted = members.len() < want;
            let ids = members
                .into_iter()
                .map(String::from_utf8)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|err| ThreadStoreError::Backend {
                    message: format!("the index {index} holds an id that is not UTF-8"),
                    source: Some(std::sync::Arc::new(err)),
                })?;
            let Some(last) = ids.last().cloned() else {
                break;
            };

            // Which of these still point at a live thread of this kind and parent?
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(keys.head(id))
                    .arg("kind")
                    .arg("parent");
            }
            let heads: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(RedisFailure::general)?;
            let mut stale = Vec::new();
            for (id, head) in ids.into_iter().zip(heads) {
                if is_listed(&head, want_kind, want_parent) {
                    live.push(id);
                } else {
                    stale.push(id);
                }
            }
            self.prune(&index, want_kind, want_parent, &stale).await?;
            cursor = Some(last);
            if exhausted {
                break;
            }
        }
        Ok(page_of(live, limit))
    }

    /// `list_threads` with `open_only`: a page of the open index, which
    /// writes keep exact (each in the script that sets or clears the
    /// finished mark; open threads carry no TTL), so its entries are listed
    /// as they are.
    async fn list_open(&self, query: ThreadQuery) -> Result<ThreadPage> {
        let keys = &self.inner.keys;
        let limit = effective_limit(query.limit);
        let (index, prefix, mode) = match (&query.parent_id, &query.kind) {
            (Some(parent), Some(kind)) => {
                (keys.open_by_parent(), format!("{parent}\0{kind}\0"), "flat")
            }
            (Some(parent), None) => (keys.open_by_parent(), format!("{parent}\0"), "kinds"),
            (None, Some(kind)) => (keys.open_by_kind(), format!("{kind}\0"), "flat"),
            (None, None) => (keys.open_by_kind(), String::new(), "kinds"),
        };
        let invocation = Invocation::new(&scripts::LIST_OPEN)
            .key(index.as_str())
            .arg(prefix)
            .arg(mode)
            .arg(query.after.clone().unwrap_or_default())
            .arg((limit + 1).to_string());
        let reply = self.inner.conn.invoke(&invocation, None).await?;
        let lists = match reply {
            Value::Array(lists) => lists,
            other => return Err(odd_listing(&index, &other)),
        };
        let mut ids = Vec::new();
        for list in lists {
            let Value::Array(members) = list else {
                return Err(odd_listing(&index, &list));
            };
            for member in members {
                let Value::BulkString(bytes) = member else {
                    return Err(odd_listing(&index, &member));
                };
                ids.push(
                    String::from_utf8(bytes).map_err(|err| ThreadStoreError::Backend {
                        message: format!("the index {index} holds an id that is not UTF-8"),
                        source: Some(std::sync::Arc::new(err)),
                    })?,
                );
            }
        }
        Ok(page_of(ids, limit))
    }

    /// Drops the entries of `index` (of this kind and parent) that point at
    /// no live thread of that kind and parent.
    pub(crate) async fn prune(
        &self,
        index: &str,
        kind: Option<&str>,
        parent: Option<&str>,
        ids: &[String],
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut invocation = Invocation::new(&scripts::PRUNE)
            .key(index)
            .arg(kind.unwrap_or_default())
            .arg(parent.unwrap_or_default());
        for id in ids {
            invocation = invocation.key(self.inner.keys.head(id)).arg(id.as_str());
        }
        let removed = self.inner.conn.invoke(&invocation, None).await?;
        if let Value::Int(n) = removed
            && n > 0
        {
            tracing::debug!(index, removed = n, "dropped index entries of gone threads");
        }
        Ok(())
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

/// Whether an index entry whose head answered `head` (to `HMGET kind parent`)
/// still belongs in an index of this kind and parent. A head that cannot be
/// read (a key of the wrong type) stays listed: the thread is there, and
/// loading it reports the corruption.
fn is_listed(head: &Value, want_kind: Option<&str>, want_parent: Option<&str>) -> bool {
    let Value::Array(fields) = head else {
        return true;
    };
    let field = |i: usize| match fields.get(i) {
        Some(Value::BulkString(bytes)) => Some(bytes.as_slice()),
        _ => None,
    };
    let (kind, parent) = (field(0), field(1));
    if kind.is_none() && parent.is_none() {
        return false;
    }
    want_kind.is_none_or(|want| kind == Some(want.as_bytes()))
        && want_parent.is_none_or(|want| parent == Some(want.as_bytes()))
}
