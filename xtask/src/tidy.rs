//! Repository rules, checked as tests: the crate dependency graph points one
//! way, every crate shares the workspace's lints and versions, and no source
//! file grows long without saying why.

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
        // The embedded default is always there: `memory://` always opens.
        if in_deps && line.starts_with("task-store-") && !line.starts_with("task-store-memory") {
            assert!(
                line.contains("optional = true"),
                "task-core must depend on backends only behind a feature: {line}"
            );
        }
    }
}

/// The crates of the workspace: the top-level folders with a manifest.
fn crate_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(root())
        .expect("the workspace root")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn the_top_level_is_the_layout_of_the_design_card() {
    let names: Vec<String> = crate_dirs()
        .iter()
        .filter_map(|d| d.file_name()?.to_str().map(str::to_owned))
        .collect();
    for required in [
        "task-core",
        "task-store",
        "task-store-memory",
        "task-store-redis",
        "task-testkit",
        "xtask",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "{required} is missing: {names:?}"
        );
    }
    for name in &names {
        let known = matches!(
            name.as_str(),
            "task-core" | "task-store" | "task-testkit" | "xtask"
        ) || name.starts_with("task-store-");
        assert!(known, "{name} is not an entry of the design card's layout");
    }
    assert!(
        !root().join("crates").exists(),
        "the crates sit at the top level: there is no crates/ folder"
    );
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    let mut checked = 0;
    for dir in crate_dirs() {
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

/// A module of task-core, as the path of its names from the crate root.
type ModPath = Vec<String>;

/// Every source file of a crate's `src`, with its module path.
fn modules(src: &std::path::Path) -> Vec<(ModPath, String)> {
    fn walk(dir: &std::path::Path, prefix: &ModPath, out: &mut Vec<(ModPath, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("a source directory")
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if path.is_dir() {
                let mut sub = prefix.clone();
                sub.push(name);
                walk(&path, &sub, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut module = prefix.clone();
                if name != "mod" && name != "lib" {
                    module.push(name);
                }
                let text = fs::read_to_string(&path).expect("a source file");
                out.push((module, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// The paths a file refers to, `crate::…` and `super::…`, resolved from the
/// crate root (`use` lists with braces give one path per name).
fn references(module: &ModPath, text: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if start > 0 {
            let before = code[..start].chars().next_back().unwrap_or(' ');
            if before.is_alphanumeric() || before == '_' || before == ':' {
                continue;
            }
        }
        let (base, rest) = if code[start..].starts_with("crate::") {
            (Vec::new(), &code[start + "crate::".len()..])
        } else {
            // `super` of `a/b/mod.rs` (module a::b) is a; of `a/b/c.rs` (a::b::c) is a::b.
            let mut base = module.clone();
            base.pop();
            (base, &code[start + "super::".len()..])
        };
        let mut path = base;
        let mut rest = rest;
        let mut extra_supers = rest;
        while let Some(r) = extra_supers.strip_prefix("super::") {
            path.pop();
            extra_supers = r;
        }
        rest = extra_supers;
        loop {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() {
                break;
            }
            rest = &rest[ident.len()..];
            path.push(ident);
            match rest.strip_prefix("::") {
                Some(r) if !r.starts_with('{') => rest = r,
                Some(r) => {
                    // A brace list: each name may be a module or an item.
                    let end = r.find('}').unwrap_or(r.len());
                    for name in r[1..end].split(',') {
                        let name: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            let mut p = path.clone();
                            p.push(name);
                            out.push(p);
                        }
                    }
                    path.clear();
                    break;
                }
                None => break,
            }
        }
        if !path.is_empty() {
            out.push(path);
        } else if let Some(r) = code[start..].split_once("::{") {
            // `crate::{A, B}` at the root.
            let r = r.1;
            let end = r.find('}').unwrap_or(r.len());
            if code[start..].starts_with("crate::{") {
                for name in r[..end].split(',') {
                    let name: String = name
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push(vec![name]);
                    }
                }
            }
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module; a name at
/// the crate root is resolved through the root's `pub use` re-exports.
fn resolve(
    path: &ModPath,
    known: &std::collections::BTreeSet<ModPath>,
    reexports: &std::collections::BTreeMap<String, ModPath>,
) -> Option<ModPath> {
    for len in (1..=path.len()).rev() {
        if known.contains(&path[..len].to_vec()) {
            return Some(path[..len].to_vec());
        }
    }
    path.first().and_then(|first| reexports.get(first).cloned())
}

/// The root's `pub use module::…::{A, B}` lines: item name → module.
fn reexports(
    lib: &str,
    known: &std::collections::BTreeSet<ModPath>,
) -> std::collections::BTreeMap<String, ModPath> {
    let mut map = std::collections::BTreeMap::new();
    let flat = lib.replace('\n', " ");
    for statement in flat.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let (head, names) = match rest.split_once("::{") {
            Some((head, names)) => (head, names.trim_end_matches('}').to_owned()),
            None => match rest.rsplit_once("::") {
                Some((head, name)) => (head, name.to_owned()),
                None => continue,
            },
        };
        let module: ModPath = head.split("::").map(|s| s.trim().to_owned()).collect();
        let Some(module) = resolve(&module, known, &std::collections::BTreeMap::new()) else {
            continue;
        };
        for name in names.split(',') {
            let name = name.trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.clone());
            }
        }
    }
    map
}

/// Sibling modules (children of one module) never import each other in a
/// circle, at any level: each module can be read after the ones it uses.
/// A child using its parent is not a sibling edge (the parent declares it).
#[test]
fn task_core_modules_import_each_other_without_circles() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = root().join("task-core/src");
    let files = modules(&src);
    let known: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let lib = &files.iter().find(|(m, _)| m.is_empty()).expect("lib.rs").1;
    let reexports = reexports(lib, &known);
    // Edges between siblings, by their parent.
    let mut edges: BTreeMap<ModPath, BTreeSet<(String, String)>> = BTreeMap::new();
    for (module, text) in &files {
        for path in references(module, text) {
            let Some(target) = resolve(&path, &known, &reexports) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // the same module, an ancestor or a descendant
            }
            edges
                .entry(module[..common].to_vec())
                .or_default()
                .insert((module[common].clone(), target[common].clone()));
        }
    }
    assert!(
        edges
            .get(&Vec::<String>::new())
            .is_some_and(|e| !e.is_empty()),
        "the reader found the crate's imports"
    );
    for (parent, edges) in &edges {
        let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in edges {
            graph.entry(from).or_default().push(to);
        }
        // Depth-first search for a back edge.
        fn visit<'a>(
            node: &'a str,
            graph: &BTreeMap<&'a str, Vec<&'a str>>,
            state: &mut BTreeMap<&'a str, bool>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<&'a str>> {
            match state.get(node) {
                Some(true) => return None,
                Some(false) => {
                    let at = stack.iter().position(|n| *n == node).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(node);
                    return Some(cycle);
                }
                None => {}
            }
            state.insert(node, false);
            stack.push(node);
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, state, stack) {
                    return Some(cycle);
                }
            }
            stack.pop();
            state.insert(node, true);
            None
        }
        let mut state = BTreeMap::new();
        for node in graph.keys() {
            if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
                panic!(
                    "modules of task-core::{} import each other in a circle: {}",
                    parent.join("::"),
                    cycle.join(" -> ")
                );
            }
        }
    }
}

/// Lines a source file may have without a reason for its size.
const LONG_FILE: usize = 720;

/// Every `.rs` file below `dir`, skipping build output.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_long_without_a_reason_at_its_top() {
    let mut files = Vec::new();
    for dir in crate_dirs() {
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 50, "only {} source files found", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = fs::read_to_string(path).expect("a readable source file");
            let lines = text.lines().count();
            // The module docs: the leading `//!` block (inner attributes
            // and blank lines may sit among them).
            let head: String = text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.starts_with("#!") || l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            (lines > LONG_FILE && !head.contains("Size:"))
                .then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {LONG_FILE} lines need a `Size:` paragraph in their module \
         docs saying why they are not split (or to be split): {long:?}"
    );
}
