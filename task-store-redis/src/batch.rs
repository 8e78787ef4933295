//! The batches: `create_batch` and `append_batch` (and `create` and
//! `append`, batches of one) laid out into runs of their scripts, sent
//! several runs to a round trip, and their replies turned into one result
//! per item.

use std::collections::{HashMap, HashSet};

use redis::Value;
use task_store::{
    AppendRequest, Committed, Result, Thread, ThreadStoreError, validate_id, validate_messages,
    validate_thread,
};

use crate::codec::{encode_messages, expected_arg, terminal_arg, to_json};
use crate::conn::Invocation;
use crate::error::{missing_result, not_sent};
use crate::keys::KeySpace;
use crate::reply::{CreateStatus, WriteReply, run_items};
use crate::scripts::{self, Lua};
use crate::store::RedisStore;

/// At most this many threads go into one run of the batch create script.
/// Measured with `examples/throughput.rs tasks` (task-shaped threads, 100
/// owners): the server's time per thread is about the same for runs of 64,
/// 128 and 256 threads (31-33 µs here, against 46-48 µs for one `create`
/// each), since what remains is per thread (its `HSET`s, its index members);
/// but a run blocks the server for all of its time (about 4 ms for 128
/// threads on that machine), so runs are kept short.
const CREATE_CHUNK: usize = 128;

/// At most this many appends (of distinct threads; the further appends of a
/// thread join its first one's run) go into one run of the batch append
/// script. See [`CREATE_CHUNK`] for why runs are kept short.
const APPEND_CHUNK: usize = 128;

/// At most this many runs of a batch script go into one pipeline (one round
/// trip), so that one round trip stays well within the response timeout
/// whatever the size of the batch.
const RUNS_PER_ROUND_TRIP: usize = 8;

/// One run of the batch create script being laid out: threads of one
/// shard, their keys and their arguments. See `lua/create_batch.lua`.
struct CreateRun<'a> {
    shard: usize,
    thread_keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Per thread: its slot in the batch and what its creation commits.
    items: Vec<(usize, Committed)>,
    ids: HashSet<&'a str>,
}

impl<'a> CreateRun<'a> {
    fn new(shard: usize) -> Self {
        Self {
            shard,
            thread_keys: Vec::new(),
            args: Vec::new(),
            items: Vec::new(),
            ids: HashSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn holds(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Lays out one validated thread of this run's shard, not yet in this
    /// run. Fails, changing nothing, when its data cannot be encoded.
    fn push(&mut self, keys: &KeySpace, slot: usize, thread: &'a Thread) -> Result<()> {
        let id = thread.id.as_str();
        let state = to_json(id, &thread.state)?;
        let meta = to_json(id, &thread.metadata)?;
        // The log of a fresh thread: in order, repeated ids skipped.
        let (messages, skipped) = encode_messages(id, &thread.messages)?;
        let appended = (messages.len() / 2) as u64;
        let args = &mut self.args;
        args.push(id.as_bytes().to_vec());
        args.push(terminal_arg(Some(thread.terminal)).as_bytes().to_vec());
        args.push(state.into_bytes());
        args.push(thread.kind.as_bytes().to_vec());
        args.push(meta.into_bytes());
        args.push(
            thread
                .parent_id
                .as_deref()
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        );
        args.push(appended.to_string().into_bytes());
        args.extend(messages);
        self.thread_keys.push(keys.thread(id));
        self.items.push((
            slot,
            Committed {
                version: 1,
                last_seq: appended,
                appended,
                skipped,
            },
        ));
        self.ids.insert(id);
        Ok(())
    }

    /// The script's invocation, and per thread its slot and what it commits.
    fn finish(self, keys: &KeySpace, retention_ms: u64) -> (Invocation, Vec<(usize, Committed)>) {
        let invocation = run_invocation(
            &scripts::CREATE_BATCH,
            keys,
            self.shard,
            retention_ms,
            (self.items.len(), self.args),
            self.thread_keys,
        );
        (invocation, self.items)
    }
}

/// One run of the batch append script being laid out: appends to threads
/// of one shard, their keys and arguments. See `lua/append_batch.lua`.
struct AppendRun {
    shard: usize,
    thread_keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Per item: its slot in the batch, and how many of its messages were
    /// skipped here as repeats of an id earlier in the same item.
    items: Vec<(usize, u64)>,
}

impl AppendRun {
    fn new(shard: usize) -> Self {
        Self {
            shard,
            thread_keys: Vec::new(),
            args: Vec::new(),
            items: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Lays out one validated append to a thread of this run's shard.
    /// Fails, changing nothing, when its data cannot be encoded.
    fn push(&mut self, keys: &KeySpace, slot: usize, request: &AppendRequest) -> Result<()> {
        let id = request.id.as_str();
        let changes = &request.changes;
        let state = changes
            .state
            .as_ref()
            .map(|s| to_json(id, s))
            .transpose()?
            .unwrap_or_default();
        // A repeated id within the item is skipped, as a second append of
        // it would be.
        let (messages, repeats) = encode_messages(id, &changes.messages)?;
        let args = &mut self.args;
        args.push(id.as_bytes().to_vec());
        args.push(expected_arg(request.precondition).into_bytes());
        args.push(state.into_bytes());
        args.push(terminal_arg(changes.terminal).as_bytes().to_vec());
        args.push((messages.len() / 2).to_string().into_bytes());
        args.extend(messages);
        self.thread_keys.push(keys.thread(id));
        self.items.push((slot, repeats));
        Ok(())
    }

    /// The script's invocation, and per item its slot and repeats.
    fn finish(self, keys: &KeySpace, retention_ms: u64) -> (Invocation, Vec<(usize, u64)>) {
        let invocation = run_invocation(
            &scripts::APPEND_BATCH,
            keys,
            self.shard,
            retention_ms,
            (self.items.len(), self.args),
            self.thread_keys,
        );
        (invocation, self.items)
    }
}

/// The invocation of one run of a batch script on `shard`: `KEYS` the
/// shard's five sorted sets, then the run's thread keys; `ARGV` the
/// retention, the item count, then the items' own arguments.
fn run_invocation(
    script: &'static Lua,
    keys: &KeySpace,
    shard: usize,
    retention_ms: u64,
    (count, item_args): (usize, Vec<Vec<u8>>),
    thread_keys: Vec<String>,
) -> Invocation {
    let mut invocation = Invocation::new(script);
    invocation.args.reserve(2 + item_args.len());
    invocation.args.push(retention_ms.to_string().into_bytes());
    invocation.args.push(count.to_string().into_bytes());
    invocation.args.extend(item_args);
    invocation.keys.reserve(5 + thread_keys.len());
    invocation.keys.extend(keys.indexes(shard));
    invocation.keys.extend(thread_keys);
    invocation
}

/// The results of a batch being filled in, one per item.
struct Results(Vec<Option<Result<Committed>>>);

impl Results {
    fn new(n: usize) -> Self {
        Self((0..n).map(|_| None).collect())
    }

    fn set(&mut self, slot: usize, result: Result<Committed>) {
        self.0[slot] = Some(result);
    }

    fn into_vec(self) -> Vec<Result<Committed>> {
        self.0
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(missing_result())))
            .collect()
    }
}

impl RedisStore {
    /// `create_batch`: one round trip per 8 runs of the batch create script,
    /// each creating up to 128 threads. Items are validated and laid out
    /// here; a run never holds the same id twice (a repeated id starts a new
    /// run, which then finds it taken).
    pub(crate) async fn create_many(&self, threads: &[Thread]) -> Vec<Result<Committed>> {
        let keys = &self.inner.keys;
        let retention_ms = self.inner.retention_ms;
        let mut results = Results::new(threads.len());
        let mut runs = Vec::new();
        // The run being filled, per shard.
        let mut open: HashMap<usize, CreateRun<'_>> = HashMap::new();
        for (slot, thread) in threads.iter().enumerate() {
            if let Err(err) = validate_thread(thread) {
                results.set(slot, Err(err));
                continue;
            }
            let shard = keys.shard(&thread.id);
            let run = open.entry(shard).or_insert_with(|| CreateRun::new(shard));
            if run.len() == CREATE_CHUNK || run.holds(&thread.id) {
                let full = std::mem::replace(run, CreateRun::new(shard));
                runs.push(full.finish(keys, retention_ms));
            }
            if let Err(err) = run.push(keys, slot, thread) {
                results.set(slot, Err(err));
            }
        }
        let mut rest: Vec<CreateRun<'_>> = open.into_values().filter(|run| run.len() > 0).collect();
        // The first item of each run in batch order, so runs go in the
        // order of their items.
        rest.sort_by_key(|run| run.items.first().map(|(slot, _)| *slot));
        runs.extend(rest.into_iter().map(|run| run.finish(keys, retention_ms)));

        self.send_runs(&runs, &mut results, |items, value, results| {
            let statuses = CreateStatus::parse_run(value, items.len())?;
            for (&(slot, committed), status) in items.iter().zip(statuses) {
                results.set(slot, status.into_result(&threads[slot].id, committed));
            }
            Ok(())
        })
        .await;
        results.into_vec()
    }

    /// `append_batch`: one round trip per 8 runs of the batch append script,
    /// each applying up to 128 appends. Items are validated and laid out
    /// here; all the items of one thread go into the run of its first item,
    /// in their order, so they apply in order whatever happens to the other
    /// runs.
    pub(crate) async fn append_many(&self, requests: &[AppendRequest]) -> Vec<Result<Committed>> {
        let keys = &self.inner.keys;
        let mut results = Results::new(requests.len());
        let mut runs: Vec<AppendRun> = Vec::new();
        // The run of each thread, and the run being filled, per shard.
        let mut run_of: HashMap<&str, usize> = HashMap::new();
        let mut filling: HashMap<usize, usize> = HashMap::new();
        for (slot, request) in requests.iter().enumerate() {
            let id = request.id.as_str();
            if let Err(err) = validate_id("thread id", id)
                .and_then(|()| validate_messages(&request.changes.messages))
            {
                results.set(slot, Err(err));
                continue;
            }
            let target = match run_of.get(id) {
                Some(&target) => target,
                None => {
                    let shard = keys.shard(id);
                    let target = match filling.get(&shard) {
                        Some(&run) if runs[run].len() < APPEND_CHUNK => run,
                        _ => {
                            runs.push(AppendRun::new(shard));
                            filling.insert(shard, runs.len() - 1);
                            runs.len() - 1
                        }
                    };
                    run_of.insert(id, target);
                    target
                }
            };
            if let Err(err) = runs[target].push(keys, slot, request) {
                results.set(slot, Err(err));
            }
        }
        let runs: Vec<_> = runs
            .into_iter()
            .filter(|run| run.len() > 0)
            .map(|run| run.finish(keys, self.inner.retention_ms))
            .collect();

        self.send_runs(&runs, &mut results, |items, value, results| {
            let replies = run_items("append", value, items.len())?;
            for (&(slot, repeats), reply) in items.iter().zip(replies) {
                let request = &requests[slot];
                let result = WriteReply::parse(&request.id, reply)
                    .and_then(|reply| reply.into_result(&request.id, request.precondition))
                    .map(|mut committed| {
                        committed.skipped += repeats;
                        committed
                    });
                results.set(slot, result);
            }
            Ok(())
        })
        .await;
        results.into_vec()
    }

    /// Sends the runs of a batch script, [`RUNS_PER_ROUND_TRIP`] to a
    /// pipeline, and fills `results`. `settle` turns one run's reply into
    /// its items' results; when it cannot (a reply of the wrong shape), or
    /// the round trip failed, the run's items get that error and the later
    /// runs are not sent (their items get a retryable error saying so), as
    /// a transport failure leaves the rest unknown.
    async fn send_runs<X>(
        &self,
        runs: &[(Invocation, Vec<(usize, X)>)],
        results: &mut Results,
        mut settle: impl FnMut(&[(usize, X)], Value, &mut Results) -> Result<()>,
    ) {
        let mut failed: Option<ThreadStoreError> = None;
        for group in runs.chunks(RUNS_PER_ROUND_TRIP) {
            if let Some(err) = &failed {
                for (slot, _) in group.iter().flat_map(|(_, items)| items) {
                    results.set(*slot, Err(not_sent(err)));
                }
                continue;
            }
            let invocations: Vec<&Invocation> = group.iter().map(|(inv, _)| inv).collect();
            let replies = self.inner.conn.run_scripts(&invocations).await;
            for ((_, items), reply) in group.iter().zip(replies) {
                if let Err(err) = reply.and_then(|value| settle(items, value, results)) {
                    for (slot, _) in items {
                        results.set(*slot, Err(err.clone()));
                    }
                    failed = Some(err);
                }
            }
        }
    }
}
