//! Workload 8, `persist_postgres`: spawn-to-durable on a private
//! PostgreSQL, in terminal writes per second, against plain inserts into
//! an ordinary table of the same server in the same run.

use std::sync::Arc;
use std::time::Instant;

use task_core::{BackgroundTaskManager, TaskStore};
use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::PostgresServer;
use tokio_postgres::types::ToSql;

use crate::Sizes;
use crate::redis::{cpu_seconds, per_second, process_cpu_seconds};
use crate::report::{Measurement, Target};
use crate::workloads::{manager_spawn_complete, owners, runtime, verify_durable};

const METHOD: &str = "tasks spawned round-robin over 100 owners on a manager with a TaskStore \
over PostgresStore (default options, a fresh schema per run) on a private PostgreSQL (initdb by \
task-testkit, loopback, its default settings: fsync off, synchronous_commit on), from the first \
spawn until wait() reported every task terminal and flush() returned, as tasks per second; \
durability verified untimed; baseline: plain INSERTs of 512-byte rows into an ordinary (logged, \
unindexed) table, 16 rows per statement, each statement its own transaction, one connection per \
core, on the same server in the same run (rows per second); the two alternate which goes first";

/// Rows per statement of the baseline.
const ROWS_PER_STATEMENT: usize = 16;
/// Bytes of each baseline row's payload.
const ROW_BYTES: usize = 512;

/// Workload 8.
pub(crate) fn persist_postgres(sizes: &Sizes) -> Measurement {
    let n = sizes.postgres_tasks;
    let mut m = Measurement::new(
        "persist_postgres",
        format!(
            "{n} tasks / {} owners; {} rows",
            sizes.spawn_owners, sizes.postgres_baseline_rows
        ),
        "writes/s",
        Some("rows/s"),
        Target::RatioAtLeast(0.2),
        METHOD,
    );
    let server = match PostgresServer::builder()
        .config("shared_preload_libraries", "pg_stat_statements")
        .start()
    {
        Ok(server) => server,
        Err(e) => {
            m.skipped = Some(format!(
                "no private PostgreSQL could be started ({e}); install its server binaries \
                 (Debian: apt-get install postgresql); no figure was measured"
            ));
            eprintln!(
                "!!! persist_postgres SKIPPED: {}",
                m.skipped.as_deref().unwrap_or("")
            );
            return m;
        }
    };
    let url = server.url();
    let owners = owners("owner", sizes.spawn_owners);
    let connections = std::thread::available_parallelism().map_or(2, usize::from);
    let setup = runtime().block_on(async {
        let admin = connect(&url).await?;
        admin
            .batch_execute(
                "CREATE EXTENSION pg_stat_statements; \
                 CREATE TABLE plain_rows (payload text NOT NULL)",
            )
            .await
            .map_err(|e| format!("setting up the baseline table: {e}"))
    });
    if let Err(e) = setup {
        m.skipped = Some(e);
        return m;
    }
    for run in 0..sizes.runs {
        let mut base = None;
        let mut rate = None;
        for step in 0..2 {
            let rt = runtime();
            if (step + run) % 2 == 0 {
                match rt.block_on(plain_inserts(
                    &url,
                    sizes.postgres_baseline_rows,
                    connections,
                )) {
                    Ok(rows_per_second) => base = Some(rows_per_second),
                    Err(e) => {
                        m.skipped = Some(format!("the plain-insert baseline failed: {e}"));
                        return m;
                    }
                }
            } else {
                let server_before = server_cpu_seconds(&server);
                let client_before = process_cpu_seconds();
                let schema = format!("bench_{run}");
                let outcome = rt.block_on(async {
                    let store = PostgresStore::connect_with(
                        &url,
                        PostgresStoreOptions::default().with_schema(schema.clone()),
                    )
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                    let admin = connect(&url).await?;
                    admin
                        .batch_execute("SELECT pg_stat_statements_reset()")
                        .await
                        .map_err(|e| format!("reset statement statistics: {e}"))?;
                    let tasks = Arc::new(TaskStore::new(Arc::new(store)));
                    let manager = BackgroundTaskManager::builder()
                        .task_store(Arc::clone(&tasks))
                        .build();
                    let (elapsed, ids) = manager_spawn_complete(&manager, n, &owners).await;
                    let server_after = server_cpu_seconds(&server);
                    let client_after = process_cpu_seconds();
                    verify_durable(&manager, &tasks, &owners, &ids)
                        .await
                        .map_err(|e| format!("persist_postgres did not persist: {e}"))?;
                    let statements = statement_report(&admin, n).await?;
                    admin
                        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                        .await
                        .map_err(|e| format!("drop the run's schema: {e}"))?;
                    let cpu = match (server_before, server_after, client_before, client_after) {
                        (Some(sb), Some(sa), Some(cb), Some(ca)) => format!(
                            "server CPU {:.2}s ({:.0}% of the elapsed time), client process \
                             CPU {:.2}s",
                            sa - sb,
                            100.0 * (sa - sb) / elapsed.as_secs_f64(),
                            ca - cb
                        ),
                        _ => "CPU times unavailable".to_owned(),
                    };
                    Ok::<_, String>((elapsed, cpu, statements))
                });
                drop(rt);
                match outcome {
                    Ok((elapsed, cpu, statements)) => {
                        let tasks_per_second = per_second(n, elapsed);
                        rate = Some(tasks_per_second);
                        m.notes.push(format!(
                            "run {}: {tasks_per_second:.0} tasks/s over {:.2}s; {cpu}; {statements}",
                            run + 1,
                            elapsed.as_secs_f64()
                        ));
                    }
                    Err(e) => panic!("persist_postgres: {e}"),
                }
            }
        }
        if let (Some(rate), Some(base)) = (rate, base) {
            m.push(rate, Some(base));
        }
    }
    m
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to the private server: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The baseline: `rows` rows of [`ROW_BYTES`] bytes inserted
/// [`ROWS_PER_STATEMENT`] to a statement over `connections` connections
/// at once, each statement its own transaction; rows per second. The table
/// is emptied afterwards (untimed).
async fn plain_inserts(url: &str, rows: usize, connections: usize) -> Result<f64, String> {
    let values: Vec<String> = (1..=ROWS_PER_STATEMENT)
        .map(|i| format!("(${i})"))
        .collect();
    let sql = format!(
        "INSERT INTO plain_rows (payload) VALUES {}",
        values.join(", ")
    );
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = connect(url).await?;
        let statement = client
            .prepare(&sql)
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        clients.push((client, statement));
    }
    let statements_each = rows / ROWS_PER_STATEMENT / connections;
    let payloads: Vec<String> = (0..ROWS_PER_STATEMENT)
        .map(|i| {
            let mut rng = fastrand::Rng::with_seed(i as u64);
            (0..ROW_BYTES).map(|_| rng.alphanumeric()).collect()
        })
        .collect();
    let params: Vec<&(dyn ToSql + Sync)> =
        payloads.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let started = Instant::now();
    let runs = clients.iter().map(|(client, statement)| async {
        for _ in 0..statements_each {
            client
                .execute(statement, &params)
                .await
                .map_err(|e| format!("insert: {e}"))?;
        }
        Ok::<_, String>(())
    });
    for result in futures::future::join_all(runs).await {
        result?;
    }
    let elapsed = started.elapsed();
    let inserted = statements_each * ROWS_PER_STATEMENT * connections;
    clients[0]
        .0
        .batch_execute("TRUNCATE plain_rows")
        .await
        .map_err(|e| format!("truncate: {e}"))?;
    Ok(per_second(inserted, elapsed))
}

/// The CPU time of every server process: the postmaster, the children it
/// has reaped (connections that ended) and the living ones.
fn server_cpu_seconds(server: &PostgresServer) -> Option<f64> {
    let postmaster = server.pid()?.to_string();
    let mut total = cpu_seconds(&postmaster, true)?;
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent's pid is the second field after the command name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent == Some(postmaster.as_str()) {
            total += cpu_seconds(pid, false).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// What the server ran during the measured part, from
/// `pg_stat_statements` (top-level statements): statements per task, and
/// per statement its calls per task, rows each and mean time.
async fn statement_report(admin: &tokio_postgres::Client, tasks: usize) -> Result<String, String> {
    let rows = admin
        .query(
            "SELECT calls, rows, total_exec_time, \
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 48) \
             FROM pg_stat_statements \
             WHERE query NOT LIKE '%pg_stat_statements%' \
             ORDER BY total_exec_time DESC",
            &[],
        )
        .await
        .map_err(|e| format!("read statement statistics: {e}"))?;
    #[allow(clippy::cast_precision_loss)]
    let tasks = tasks as f64;
    let mut total_calls = 0i64;
    let mut parts = Vec::new();
    for row in &rows {
        let calls: i64 = row.get(0);
        let returned: i64 = row.get(1);
        let time_ms: f64 = row.get(2);
        let query: String = row.get(3);
        total_calls += calls;
        #[allow(clippy::cast_precision_loss)]
        let (calls_f, returned_f) = (calls as f64, returned as f64);
        if calls_f / tasks >= 0.001 {
            parts.push(format!(
                "[{query}…] {:.4}/task x {:.0} rows x {:.2} ms",
                calls_f / tasks,
                returned_f / calls_f.max(1.0),
                time_ms / calls_f.max(1.0)
            ));
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let per_task = total_calls as f64 / tasks;
    Ok(format!(
        "{per_task:.4} statements per task ({total_calls} in all): {}",
        parts.join("; ")
    ))
}
