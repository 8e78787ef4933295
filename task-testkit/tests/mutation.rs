//! The conformance suite's self-test by mutation: the whole suite runs
//! against every broken store of `task_testkit::broken` (each correct but for
//! one subtle defect) and must catch each one, with the cases written for it
//! among those that fail; and it runs against faithful stores and wrappers,
//! which must pass every case. It prints which cases catch which defect, so a
//! thin spot shows (`cargo test -p task-testkit --test mutation -- --nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use task_store::ThreadStore;
use task_store_memory::MemoryStore;
use task_testkit::broken::{self, Defect, Mutant, PassThrough, SmallStore};
use task_testkit::conformance::{self, CASES, Report, RunOptions, Verdict};

/// Makes a fresh store.
type Maker = fn() -> Arc<dyn ThreadStore>;

/// A case that hangs on a broken store fails after this long (none should).
fn options() -> RunOptions {
    RunOptions::default().with_timeout(Duration::from_secs(60))
}

async fn run(make: impl Fn() -> Arc<dyn ThreadStore>) -> Report {
    conformance::run_cases(CASES, || std::future::ready(make()), options()).await
}

/// The names of the cases that failed, with why.
fn failures(report: &Report) -> BTreeMap<&'static str, String> {
    report
        .outcomes
        .iter()
        .filter_map(|outcome| match &outcome.verdict {
            Verdict::Failed(why) => Some((outcome.case.name, why.clone())),
            Verdict::Passed | Verdict::Skipped => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_broken_store_is_caught_and_faithful_stores_pass() {
    let started = Instant::now();
    let faithful: [(&str, Maker); 3] = [
        ("SmallStore", || Arc::new(SmallStore::new())),
        ("PassThrough<SmallStore>", || {
            Arc::new(PassThrough::new(SmallStore::new()))
        }),
        ("PassThrough<MemoryStore>", || {
            Arc::new(PassThrough::new(MemoryStore::new()))
        }),
    ];
    let mutants = broken::mutants();
    assert!(mutants.len() >= 12, "at least 12 broken stores");
    let (faithful_reports, mutant_reports) = futures::join!(
        join_all(faithful.iter().map(|(_, make)| run(make))),
        join_all(mutants.iter().map(|mutant| run(|| mutant.make()))),
    );

    let mut problems = Vec::new();
    for ((name, _), report) in faithful.iter().zip(&faithful_reports) {
        if !report.all_passed() {
            problems.push(format!("the faithful {name} failed:\n{report}"));
        }
    }

    let known: BTreeSet<&str> = CASES.iter().map(|case| case.name).collect();
    let mut catches: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    println!(
        "\nmutation self-test: {} broken stores against {} cases",
        mutants.len(),
        CASES.len()
    );
    for (mutant, report) in mutants.iter().zip(&mutant_reports) {
        let failed = failures(report);
        print_catch(mutant, &failed);
        for case in failed.keys() {
            catches.entry(case).or_default().push(mutant.name);
        }
        if failed.is_empty() {
            problems.push(format!(
                "{} was not caught by any case: {}",
                mutant.name, mutant.defect
            ));
        }
        for case in mutant.caught_by {
            if !known.contains(case) {
                problems.push(format!("{} names an unknown case {case}", mutant.name));
            } else if !failed.contains_key(case) {
                problems.push(format!(
                    "{}: the case {case}, written to catch it, passed",
                    mutant.name
                ));
            }
        }
    }
    let idle: Vec<&str> = CASES
        .iter()
        .map(|case| case.name)
        .filter(|name| !catches.contains_key(name))
        .collect();
    println!(
        "\ncases that catch no broken store ({} of {}): {}",
        idle.len(),
        CASES.len(),
        idle.join(", ")
    );
    println!("mutation self-test ran in {:.1?}", started.elapsed());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn print_catch(mutant: &Mutant, failed: &BTreeMap<&'static str, String>) {
    println!(
        "\n{} ({}): caught by {} case{}",
        mutant.name,
        mutant.defect,
        failed.len(),
        if failed.len() == 1 { "" } else { "s" }
    );
    for (case, why) in failed {
        let why: String = why.chars().take(160).collect();
        println!("    {case}: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_say_what_went_wrong() {
    // The failures a backend author reads name the problem, not just the
    // assertion.
    let lost = conformance::compare_and_swap_loops_lose_no_update(
        Arc::new(SmallStore::with_defect(Defect::IgnoresPreconditions)),
        &conformance::fresh_prefix(),
    )
    .await
    .expect_err("a store that ignores preconditions loses updates");
    assert!(lost.starts_with("lost updates"), "{lost}");
    let winners = conformance::concurrent_exact_appends_have_exactly_one_winner(
        Arc::new(SmallStore::with_defect(Defect::IgnoresPreconditions)),
        &conformance::fresh_prefix(),
    )
    .await
    .expect_err("more than one winner");
    assert!(
        winners.starts_with("64 of 64 concurrent Exact(1) appends committed"),
        "{winners}"
    );
}
