//! Workload 7, `memory_per_task`: resident bytes per terminal task kept in a
//! manager, measured in a fresh child process of this binary.

use std::fs;
use std::process::{Command, ExitCode};

use serde_json::{Value, json};
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskStatus, new_task_id,
};

use crate::Sizes;
use crate::report::{Measurement, Target};
use crate::workloads::{owners, runtime, trivial};

/// The first argument that makes this binary the measuring child.
pub(crate) const CHILD_FLAG: &str = "--child-memory";

/// Tasks spawned before the batch is waited to terminal.
const BATCH: usize = 1_000;

/// The process's resident set, in bytes, from `VmRSS` in
/// `/proc/self/status`.
fn resident_bytes() -> Result<u64, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|e| format!("bad VmRSS line {line:?}: {e}"))?;
    Ok(kib * 1024)
}

/// The child: `--child-memory <tasks>`. Prints one JSON object with the
/// resident set before and after.
pub(crate) fn child(args: &[String]) -> ExitCode {
    let Some(tasks) = args.first().and_then(|n| n.parse::<usize>().ok()) else {
        eprintln!("usage: task-bench {CHILD_FLAG} <tasks> [no-metadata]");
        return ExitCode::FAILURE;
    };
    let with_metadata = args.get(1).map(String::as_str) != Some("no-metadata");
    let rt = runtime();
    let result: Result<Value, String> = rt.block_on(async {
        let owners = owners("owner", 100);
        // Everything the bench itself holds is allocated before the first
        // reading: the ids, the owners, the metadata.
        let params: Vec<SpawnParams> = (0..tasks)
            .map(|i| SpawnParams {
                task_id: new_task_id(),
                owner_thread_id: owners[i % owners.len()].clone(),
                task_type: "bench".to_owned(),
                description: "trivial".to_owned(),
                parent_task_id: None,
                metadata: if with_metadata {
                    json!({ "tool": "bench", "n": i })
                } else {
                    Value::Null
                },
            })
            .collect();
        let manager = BackgroundTaskManager::new();
        let before = resident_bytes()?;
        let mut done = 0usize;
        while done < tasks {
            let end = (done + BATCH).min(tasks);
            // The manager gets copies made after the first reading, so all
            // it keeps is counted; the originals stay with the bench.
            for p in &params[done..end] {
                manager
                    .spawn_with_id(p.clone(), RunCancellationToken::new(), |_ctx| trivial())
                    .await
                    .map_err(|e| format!("spawn failed: {e}"))?;
            }
            for p in &params[done..end] {
                let summary = manager
                    .wait(&p.owner_thread_id, &p.task_id)
                    .await
                    .ok_or_else(|| format!("task {} is unknown", p.task_id))?;
                if summary.status != TaskStatus::Completed {
                    return Err(format!("task {} ended {}", p.task_id, summary.status));
                }
            }
            done = end;
        }
        let after = resident_bytes()?;
        let kept: usize = {
            let mut n = 0;
            for owner in &owners {
                n += manager.list(owner, None).await.len();
            }
            n
        };
        if kept != tasks {
            return Err(format!("the manager keeps {kept} of {tasks} tasks"));
        }
        drop(manager);
        Ok(json!({ "tasks": tasks, "rss_before": before, "rss_after": after }))
    });
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("task-bench {CHILD_FLAG}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the child once; returns bytes per task.
fn run_child(tasks: usize, with_metadata: bool) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let output = Command::new(&exe)
        .arg(CHILD_FLAG)
        .arg(tasks.to_string())
        .args((!with_metadata).then_some("no-metadata"))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let value: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the child printed no JSON ({e})"))?;
    let field = |name: &str| {
        value[name]
            .as_u64()
            .ok_or_else(|| format!("the child's output has no {name}: {value}"))
    };
    let (before, after, n) = (field("rss_before")?, field("rss_after")?, field("tasks")?);
    #[allow(clippy::cast_precision_loss)]
    let per_task = after.saturating_sub(before) as f64 / n as f64;
    Ok(per_task)
}

/// Workload 7.
pub(crate) fn memory_per_task(sizes: &Sizes) -> Measurement {
    let n = sizes.memory_tasks;
    let mut m = Measurement::new(
        "memory_per_task",
        format!("{n} terminal tasks / 100 owners"),
        "bytes/task",
        None,
        Target::ValueBelow(1024.0),
        "in a fresh child process: VmRSS after every task is terminal (spawned with \
         spawn_with_id in batches of 1,000, each waited to terminal) minus VmRSS before the \
         first spawn (runtime and an empty manager built, the bench's own SpawnParams with \
         metadata {\"tool\":\"bench\",\"n\":i} already allocated; the manager gets fresh \
         clones), over the task count; freed memory the allocator keeps resident is counted, \
         so this is an upper bound of what the manager holds",
    );
    for _ in 0..sizes.runs {
        match run_child(n, true) {
            Ok(per_task) => m.push(per_task, None),
            Err(e) => {
                m.skipped = Some(format!("the measuring child failed: {e}"));
                return m;
            }
        }
    }
    // Not the figure: how much of it is the metadata (a `serde_json` map
    // allocates a whole B-tree node even for two keys).
    match run_child(n, false) {
        Ok(per_task) => m.notes.push(format!(
            "the same without metadata (Value::Null), one run: {per_task:.0} bytes/task"
        )),
        Err(e) => m
            .notes
            .push(format!("the run without metadata failed: {e}")),
    }
    m
}
