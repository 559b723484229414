//! The modules of bits-manager and bits-http import each other one way only (ARCHITECTURE.md:
//! "imports point only downwards"): this reads their sources and fails on any import cycle,
//! naming the modules in it, so a new `use crate::…` that closes a circle is caught in review.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The non-test code of a source file.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default().to_string()
}

/// A top-level module's non-test code: its file, or every file of its directory.
fn module_code(path: &Path) -> String {
    if !path.is_dir() {
        return code_of(path);
    }
    let mut code = String::new();
    for entry in std::fs::read_dir(path).unwrap() {
        code.push_str(&module_code(&entry.unwrap().path()));
    }
    code
}

/// The top-level modules a path after `crate::` names: `a` of `a::…`, or each of `{a, b::c}`.
fn named_after(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    };
    let Some(group) = rest.strip_prefix('{') else { return vec![ident(rest)] };
    let mut names = vec![ident(group)];
    let mut depth = 0;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => names.push(ident(&group[at + 1..])),
            _ => {}
        }
    }
    names
}

/// Top-level module → the top-level modules its non-test code names through `crate::`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        let is_rust = path.extension().is_some_and(|e| e == "rs");
        if !(is_rust || path.is_dir()) || module == "lib" || module == "main" {
            continue;
        }
        let code = module_code(&path);
        let mut used = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let names = named_after(&code[at + "crate::".len()..]);
            used.extend(names.into_iter().filter(|name| *name != module));
        }
        graph.entry(module).or_insert_with(BTreeSet::new).extend(used);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    graph.values_mut().for_each(|used| used.retain(|m| modules.contains(m)));
    graph
}

/// A cycle through `start`, if there is one: the path back to it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((module, path)) = stack.pop() {
        for next in &graph[&module] {
            if next == start {
                return Some(path.iter().cloned().chain([next.clone()]).collect());
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

fn assert_acyclic(src: &Path) {
    let graph = imports(src);
    assert!(graph.len() > 5, "read too few modules in {}: {graph:?}", src.display());
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle in {}: {}", src.display(), cycle.join(" → "));
        }
    }
}

#[test]
fn bits_manager_modules_import_one_way() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn bits_http_modules_import_one_way() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../bits-http/src"));
}

/// The checker itself finds a cycle (a test that could never fail would prove nothing).
#[test]
fn a_circle_of_imports_is_found() {
    let dir = tempfile::tempdir().unwrap();
    // c closes the circle through a grouped import, which names its modules after the brace.
    for (module, text) in [
        ("a", "use crate::b::Thing;"),
        ("b", "use crate::c::Thing;"),
        ("c", "use crate::{d::{self, Other}, a::Thing};"),
        ("d", "use crate::a::Thing;"),
        ("e", "use crate::d::Thing;"),
        ("f", "use crate::e::Thing;"),
    ] {
        std::fs::write(dir.path().join(format!("{module}.rs")), format!("{text}\n")).unwrap();
    }
    let graph = imports(dir.path());
    let cycle = cycle_from(&graph, "a").expect("a → b → c → a is a cycle");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    assert_eq!(cycle_from(&graph, "f"), None, "f only leads into the cycle");
}
