//! Developer chores for this workspace, run as `cargo xtask <command>`.
//!
//! - `cargo xtask ci`: the whole gate: formatting, clippy with warnings
//!   denied on every target and feature set, the test suite (Redis tests
//!   included), and the docs with warnings denied.
//! - `cargo xtask bench [--quick]`: the benchmark workloads in release mode;
//!   writes `target/bench/results.json` and prints a table.
//!
//! The cargo-xtask convention: no dependencies, the workspace root from
//! `CARGO_MANIFEST_DIR`, cargo through `$CARGO`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

#[cfg(test)]
mod tidy;

const HELP: &str = "\
Usage: cargo xtask <command>

Commands:
  ci             fmt check, clippy (-D warnings, all targets, all feature sets),
                 the workspace tests (all features, and task-core with none),
                 docs with warnings denied
  bench          run the benchmark workloads (release); write target/bench/results.json
  bench --quick  the same, smaller, in under a minute
  help           this text
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        None | Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs one step, printing what it runs and how long it took.
fn step(name: &str, mut cmd: Command) -> Result<(), String> {
    println!("\n==> {name}: {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: cannot start {cmd:?}: {e}"))?;
    println!(
        "==> {name}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn ci() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    step("fmt", fmt)?;

    for features in [None, Some("--all-features")] {
        let mut clippy = cargo();
        clippy.args(["clippy", "--workspace", "--all-targets", "--locked"]);
        clippy.args(features);
        clippy.args(["--", "-D", "warnings"]);
        step("clippy", clippy)?;
    }

    // Docs before the tests: a broken link should fail in seconds, not
    // after the suite.
    let mut doc = cargo();
    doc.args([
        "doc",
        "--workspace",
        "--no-deps",
        "--all-features",
        "--locked",
    ]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    step("doc", doc)?;

    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features", "--locked"]);
    step("test", test)?;

    // The feature-off paths: task-core without any backend compiled in
    // (its doc examples open `memory://`, so they run only with it).
    let mut bare = cargo();
    bare.args([
        "test",
        "-p",
        "task-core",
        "--no-default-features",
        "--lib",
        "--tests",
        "--locked",
    ]);
    step("test (no default features)", bare)?;

    // The Redis store without TLS: `rediss://` must be refused with an
    // error naming the feature (tests compiled only without `tls`).
    let mut plain_redis = cargo();
    plain_redis.args([
        "test",
        "-p",
        "task-store-redis",
        "--lib",
        "--test",
        "tls",
        "--locked",
    ]);
    step("test (task-store-redis without tls)", plain_redis)?;

    Ok(())
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut run = cargo();
    // The harness is a bench target of task-core (`harness = false`):
    // release profile, every backend compiled in.
    run.args([
        "bench",
        "--locked",
        "-p",
        "task-core",
        "--all-features",
        "--bench",
        "workloads",
        "--",
    ]);
    run.args(args);
    step("bench", run)
}
