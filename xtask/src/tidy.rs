//! Repository rules, checked as tests: the crate dependency graph points one
//! way, and every crate shares the workspace's lints and versions.

use std::fs;

use crate::root;

/// The names of a crate's dependencies (normal, dev and build), from its
/// manifest, by section.
fn dependencies(krate: &str) -> Vec<(String, String)> {
    let manifest = root().join(krate).join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest.display()));
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        if section.ends_with("dependencies")
            && let Some((name, _)) = line.split_once('=')
        {
            let name = name.trim().split('.').next().unwrap_or_default().to_owned();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push((section.clone(), name));
            }
        }
    }
    deps
}

fn normal_dependencies(krate: &str) -> Vec<String> {
    dependencies(krate)
        .into_iter()
        .filter(|(section, _)| section == "dependencies")
        .map(|(_, name)| name)
        .collect()
}

#[test]
fn the_contract_crate_depends_on_no_other_crate_of_ours() {
    let deps = normal_dependencies("task-store");
    for ours in [
        "task-core",
        "task-store-memory",
        "task-store-redis",
        "task-store-postgres",
        "task-testkit",
    ] {
        assert!(
            !deps.iter().any(|d| d == ours),
            "task-store depends on {ours}"
        );
    }
}

#[test]
fn backends_depend_on_the_contract_and_never_on_task_core() {
    for backend in [
        "task-store-memory",
        "task-store-redis",
        "task-store-postgres",
    ] {
        let deps = normal_dependencies(backend);
        assert!(
            deps.iter().any(|d| d == "task-store"),
            "{backend} must implement task-store"
        );
        for forbidden in [
            "task-core",
            "task-store-memory",
            "task-store-redis",
            "task-store-postgres",
            "task-testkit",
        ] {
            if forbidden != backend {
                assert!(
                    !deps.iter().any(|d| d == forbidden),
                    "{backend} depends on {forbidden}: backends know only task-store"
                );
            }
        }
    }
}

#[test]
fn the_testkit_depends_on_no_backend_and_not_on_task_core() {
    let deps = normal_dependencies("task-testkit");
    assert!(
        deps.iter().any(|d| d == "task-store"),
        "the manifest was read: {deps:?}"
    );
    for forbidden in [
        "task-core",
        "task-store-memory",
        "task-store-redis",
        "task-store-postgres",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "task-testkit depends on {forbidden}"
        );
    }
}

#[test]
fn task_core_reaches_backends_only_through_optional_features() {
    let manifest = root().join("task-core/Cargo.toml");
    let text = fs::read_to_string(&manifest).expect("task-core manifest");
    let mut in_deps = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("task-store-") {
            assert!(
                line.contains("optional = true"),
                "task-core must depend on backends only behind a feature: {line}"
            );
        }
    }
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    // The crates sit at the top level of the workspace.
    let entries = fs::read_dir(root()).expect("workspace root");
    let mut checked = 0;
    for entry in entries {
        let dir = entry.expect("directory entry").path();
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        assert!(
            text.contains("[lints]") && text.contains("workspace = true"),
            "{} does not use [lints] workspace = true",
            manifest.display()
        );
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} crate manifests were found");
}
