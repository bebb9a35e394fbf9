//! The gateway crate's module graph: no import cycle between its files, and no room (top-level module) using a
//! room on its own or a higher layer. The layers are read from `docs/ARCHITECTURE.md` (its `layer N: rooms`
//! lines), so the documented layering and the checked one are the same text.
//!
//! An edge is a path a file names: `crate::a::b`, `super::x`, or `child::y` in a file that declares `mod child`.
//! It points at the deepest module file that path reaches. Declaring a child module (`mod x;`) is not an edge.
//! Unit tests (`#[cfg(test)] mod tests` at the end of a file) and comments are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["meters", "dlms"]`; the crate root is `[]`.
type Module = Vec<String>;

/// The module a file under `src/` defines.
fn module_of(relative: &Path) -> Module {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The text that counts: comments removed, inline unit-test modules (`#[cfg(test)] mod x { ... }`) skipped.
fn code_of(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut lines = source.lines().peekable();
    // Brace depth inside a skipped test module (0: not skipping).
    let mut skipping: Option<i64> = None;
    while let Some(line) = lines.next() {
        let code = match line.find("//") {
            // `//` inside a string literal (URLs) is rare in paths; cutting there only loses text, never adds edges.
            Some(at) => &line[..at],
            None => line,
        };
        if let Some(depth) = skipping.as_mut() {
            *depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        if code.trim_start().starts_with("#[cfg(test)]")
            && let Some(next) = lines.peek()
            && next.trim_start().starts_with("mod ")
            && next.contains('{')
        {
            let next = lines.next().unwrap_or_default();
            let depth = next.matches('{').count() as i64 - next.matches('}').count() as i64;
            skipping = (depth > 0).then_some(depth);
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the path starting at `text` (just after `prefix::`) into full paths, following `{a, b::c}` groups.
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut rest = text;
    loop {
        let rest_trim = rest.trim_start();
        if let Some(group) = rest_trim.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &group[..end];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&path, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&path, &inner[start..], out);
            return;
        }
        let ident: String = rest_trim.chars().take_while(|c| is_ident(*c)).collect();
        if ident.is_empty() || ident == "self" {
            out.push(path);
            return;
        }
        path.push(ident.clone());
        rest = &rest_trim[ident.len()..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => {
                out.push(path);
                return;
            }
        }
    }
}

/// Every module path `code` (of module `this`, with child modules `children`) refers to.
fn references(code: &str, this: &[String], children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<(usize, char)> = code.char_indices().collect();
    for (n, &(at, _)) in bytes.iter().enumerate() {
        let preceded_by_path = n > 0 && {
            let before = &code[..at];
            before.ends_with("::") || before.chars().next_back().is_some_and(is_ident)
        };
        if preceded_by_path {
            continue;
        }
        let rest = &code[at..];
        let head: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        let Some(after) = rest[head.len()..].strip_prefix("::") else { continue };
        let base: Vec<String> = match head.as_str() {
            "crate" => Vec::new(),
            "super" => {
                let mut base = this.to_vec();
                base.pop();
                let mut after = after;
                // `super::super::x`
                while let Some(next) = after.strip_prefix("super::") {
                    base.pop();
                    after = next;
                }
                expand(&base, after, &mut out);
                continue;
            }
            child if children.contains(child) => {
                let mut base = this.to_vec();
                base.push(child.to_owned());
                base
            }
            _ => continue,
        };
        expand(&base, after, &mut out);
    }
    out
}

/// The deepest module of `modules` that `path` reaches (`None` for the crate root).
fn resolve<'a>(path: &[String], modules: &'a BTreeSet<Module>) -> Option<&'a Module> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n].to_vec()))
}

/// A cycle of `graph`, as the list of nodes around it, if there is one.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut marks, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

/// Edges that break the layering: a room using a room on its own or a higher layer, or a room without a layer.
fn layering_violations(graph: &BTreeMap<Module, BTreeSet<Module>>, layers: &BTreeMap<String, u32>) -> Vec<String> {
    let mut problems = Vec::new();
    let room = |m: &Module| m.first().cloned().unwrap_or_else(|| "lib".to_owned());
    for (from, tos) in graph {
        for to in tos {
            let (a, b) = (room(from), room(to));
            if a == b {
                continue;
            }
            match (layers.get(&a), layers.get(&b)) {
                (Some(la), Some(lb)) if la > lb => {}
                (Some(la), Some(lb)) => problems.push(format!(
                    "{} (layer {la}) uses {} (layer {lb}): a room may only use rooms on lower layers",
                    name(from),
                    name(to)
                )),
                (None, _) => problems.push(format!("room `{a}` has no layer in docs/ARCHITECTURE.md")),
                (_, None) => problems.push(format!("room `{b}` has no layer in docs/ARCHITECTURE.md")),
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn name(m: &Module) -> String {
    if m.is_empty() { "crate".to_owned() } else { m.join("::") }
}

/// The `layer N: room room ...` lines of the architecture document.
fn parse_layers(doc: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.trim().strip_prefix("layer ") else { continue };
        let Some((number, rooms)) = rest.split_once(':') else { continue };
        let Ok(number) = number.trim().parse::<u32>() else { continue };
        for room in rooms.split_whitespace() {
            layers.insert(room.trim_matches(',').to_owned(), number);
        }
    }
    layers
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file-level module graph of the library under `src` (the binary's `main.rs` is another crate).
fn crate_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let sources: BTreeMap<Module, String> = files
        .iter()
        .map(|f| {
            let relative = f.strip_prefix(src).expect("under src/");
            (module_of(relative), code_of(&std::fs::read_to_string(f).expect("readable source")))
        })
        .collect();
    let modules: BTreeSet<Module> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &sources {
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .filter_map(|m| m.last().cloned())
            .collect();
        let edges: BTreeSet<Module> = references(code, module, &children)
            .iter()
            .filter_map(|path| resolve(path, &modules))
            .filter(|target| *target != module && !target.is_empty())
            .cloned()
            .collect();
        graph.insert(module.clone(), edges);
    }
    graph
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_gateway_module_graph_has_no_cycle_and_follows_the_layers() {
    let graph = crate_graph(&manifest_dir().join("src"));
    assert!(graph.len() > 20, "the graph was read: {} files", graph.len());
    assert!(graph.values().map(BTreeSet::len).sum::<usize>() > 40, "edges were found");
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(name).collect();
        panic!("import cycle between the gateway's modules: {}", names.join(" -> "));
    }
    let doc = std::fs::read_to_string(manifest_dir().join("../../docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let layers = parse_layers(&doc);
    assert!(layers.len() >= 10, "the layer table of docs/ARCHITECTURE.md was read: {layers:?}");
    let problems = layering_violations(&graph, &layers);
    assert!(problems.is_empty(), "the layering of docs/ARCHITECTURE.md is broken:\n  {}", problems.join("\n  "));
}

fn m(path: &str) -> Module {
    path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn graph(edges: &[(&str, &str)]) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, b) in edges {
        g.entry(m(a)).or_default().insert(m(b));
        g.entry(m(b)).or_default();
    }
    g
}

#[test]
fn the_checker_finds_a_cycle_in_a_made_up_graph() {
    let acyclic = graph(&[("gateway", "meters::conn"), ("meters::conn", "meters"), ("meters", "error")]);
    assert_eq!(find_cycle(&acyclic), None);
    let cyclic = graph(&[
        ("gateway", "meters::conn"),
        ("meters::conn", "gateway"),
        ("commands::request", "meters"),
        ("meters", "registers"),
    ]);
    let cycle = find_cycle(&cyclic).expect("the cycle is found");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&m("gateway")) && cycle.contains(&m("meters::conn")), "{cycle:?}");
    // A three-file cycle like the one the crate once had.
    let three = graph(&[("commands::request", "meters"), ("meters", "registers"), ("registers", "commands::request")]);
    assert_eq!(find_cycle(&three).map(|c| c.len()), Some(4));
}

#[test]
fn the_checker_finds_an_upward_or_sideways_import() {
    let layers = parse_layers("```\nlayer 2: meters mqtt\nlayer 1: hub\nlayer 0: model error\n```\n");
    assert_eq!(layers.get("mqtt"), Some(&2));
    let ok = graph(&[("meters::conn", "hub"), ("hub", "model"), ("meters::dlms", "meters::conn")]);
    assert!(layering_violations(&ok, &layers).is_empty());
    let up = graph(&[("hub", "meters::conn")]);
    assert_eq!(layering_violations(&up, &layers).len(), 1);
    let sideways = graph(&[("meters::conn", "mqtt::sink")]);
    assert_eq!(layering_violations(&sideways, &layers).len(), 1);
    let unknown = graph(&[("stats", "hub")]);
    assert!(layering_violations(&unknown, &layers)[0].contains("no layer"));
}

#[test]
fn the_checker_reads_paths_as_rust_does() {
    let sorted = |paths: Vec<Vec<String>>| {
        let mut v: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
        v.sort();
        v
    };
    let code = code_of(
        "use super::{conn::Conn, registry::{MeterInfo, Registered}};\nuse crate::error::OpError; // crate::gateway\n\
         fn f() { let x = ivy_protocol::dlms::Obis::new(); super::super::model::now_ms(); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::gateway::Gateway;\n    fn f() {}\n}\nuse crate::hub::Hub;\n",
    );
    assert_eq!(
        sorted(references(&code, &m("meters::dlms"), &BTreeSet::new())),
        [
            "error::OpError",
            "hub::Hub",
            "meters::conn::Conn",
            "meters::registry::MeterInfo",
            "meters::registry::Registered",
            "model::now_ms"
        ]
    );
    let children: BTreeSet<String> = ["api".to_owned(), "state".to_owned()].into();
    let code = code_of("use state::{ApiError, HttpState};\nfn r() { get(api::health); }\n");
    assert_eq!(
        sorted(references(&code, &m("http"), &children)),
        ["http::api::health", "http::state::ApiError", "http::state::HttpState"]
    );
    let modules: BTreeSet<Module> = [m("meters"), m("meters::registry"), m("error")].into();
    assert_eq!(resolve(&m("meters::registry::MeterInfo"), &modules), Some(&m("meters::registry")));
    assert_eq!(resolve(&m("meters::SessionHandle"), &modules), Some(&m("meters")));
    assert_eq!(module_of(Path::new("meters/mod.rs")), m("meters"));
    assert_eq!(module_of(Path::new("meters/dlms.rs")), m("meters::dlms"));
    assert_eq!(module_of(Path::new("lib.rs")), m(""));
}
