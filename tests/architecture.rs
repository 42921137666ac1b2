//! The shape of `src/` that ARCHITECTURE.md promises, checked on every test run:
//! no import cycles between source files, no stage module reaching up into the
//! proxy (`gateway`), no source file over 600 lines.
//!
//! A reference is any path naming a module of this crate: `crate::a::b`, `super::a`,
//! `self::a`, or a path starting with a child module's name. It resolves to the file of
//! the longest module prefix that exists, so `crate::config::Upstream` is an edge to
//! `config/mod.rs`, and that file's `pub use runtime::*` an edge on to `config/runtime.rs`.
//! Test code (`tests.rs` files and `#[cfg(test)] mod` blocks) is left out: a test may
//! use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Stages of the request path; none may import `gateway` (the Pingora hooks).
const STAGES: &[&str] = &[
    "auth",
    "limits",
    "upstream",
    "response",
    "request",
    "pii",
    "fleet",
    "telemetry",
];

const MAX_LINES: usize = 600;

struct Source {
    /// Module path (`["config", "runtime"]`); empty for `lib.rs`.
    module: Vec<String>,
    /// The file's text without test code.
    text: String,
    lines: usize,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code before the first `#[cfg(test)]` that opens a module, without comments
/// (a doc link is not an import).
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect();
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            end = i;
            break;
        }
    }
    lines[..end].join("\n")
}

fn sources() -> BTreeMap<String, Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&root, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).expect("under src");
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&f).expect("read source");
        let lines = text.lines().count();
        let mut module: Vec<String> = rel_s
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect();
        let last = module.last().cloned().unwrap_or_default();
        // Test modules and the binary's entry point (a crate of its own) are left out.
        if last == "tests" || rel_s == "main.rs" {
            continue;
        }
        if matches!(last.as_str(), "mod" | "lib") {
            module.pop();
        }
        out.insert(
            rel_s,
            Source {
                module,
                text: without_tests(&text),
                lines,
            },
        );
    }
    out
}

/// Paths written in `text`: runs of `ident::ident::…` (identifiers only, no generics).
fn paths(text: &str) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let start = j;
                while j < bytes.len() && ident(bytes[j]) {
                    j += 1;
                }
                segs.push(text[start..j].to_string());
                if bytes[j..].starts_with(b"::") && bytes.get(j + 2).is_some_and(|&b| ident(b)) {
                    j += 2;
                } else {
                    break;
                }
            }
            // `use super::{a, b}` names the module before the braces.
            let grouped = bytes[j..].starts_with(b"::{");
            if segs.len() > 1 || grouped {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The import graph: file → files it names.
fn graph(srcs: &BTreeMap<String, Source>) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<Vec<String>, String> = srcs
        .iter()
        .map(|(f, s)| (s.module.clone(), f.clone()))
        .collect();
    let resolve = |full: &[String]| -> Option<String> {
        (1..=full.len())
            .rev()
            .find_map(|n| by_module.get(&full[..n]).cloned())
    };
    let mut g = BTreeMap::new();
    for (file, src) in srcs {
        let here = src.module.clone();
        let mut edges = BTreeSet::new();
        for p in paths(&src.text) {
            let full: Vec<String> = match p[0].as_str() {
                "crate" => p[1..].to_vec(),
                "super" => {
                    let mut base = here[..here.len().saturating_sub(1)].to_vec();
                    let mut rest = &p[1..];
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                "self" => here.iter().chain(&p[1..]).cloned().collect(),
                first => {
                    // A child module named at the start of a relative path.
                    let mut child = here.clone();
                    child.push(first.to_string());
                    if !by_module.contains_key(&child) {
                        continue;
                    }
                    here.iter().chain(&p).cloned().collect()
                }
            };
            if full.is_empty() {
                continue;
            }
            if let Some(target) = resolve(&full) {
                if &target != file && by_module.get(&Vec::new()) != Some(&target) {
                    edges.insert(target);
                }
            }
        }
        g.insert(file.clone(), edges);
    }
    g
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycles_between_source_files() {
    let g = graph(&sources());
    let found: Vec<Vec<String>> = cycles(&g)
        .into_iter()
        .map(|comp| {
            // Each file with the files of its cycle it names.
            comp.iter()
                .map(|f| {
                    let inner: Vec<&str> = g[f]
                        .iter()
                        .filter(|e| comp.contains(e))
                        .map(String::as_str)
                        .collect();
                    format!("{f} -> {}", inner.join(", "))
                })
                .collect()
        })
        .collect();
    assert!(
        found.is_empty(),
        "files that import each other (directly or through others): {found:#?}"
    );
}

#[test]
fn no_stage_imports_the_gateway() {
    let g = graph(&sources());
    let bad: Vec<(String, String)> = g
        .iter()
        .filter(|(f, _)| STAGES.iter().any(|s| f.starts_with(&format!("{s}/"))))
        .flat_map(|(f, es)| {
            es.iter()
                .filter(|e| e.starts_with("gateway/"))
                .map(move |e| (f.clone(), e.clone()))
        })
        .collect();
    assert!(bad.is_empty(), "stage modules importing gateway: {bad:?}");
}

#[test]
fn no_source_file_is_over_600_lines() {
    let long: Vec<(String, usize)> = sources()
        .into_iter()
        .filter(|(_, s)| s.lines > MAX_LINES)
        .map(|(f, s)| (f, s.lines))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_graph_sees_known_edges() {
    // The checks above mean something only if the parser finds real imports.
    let g = graph(&sources());
    assert!(g["gateway/admit.rs"].iter().any(|e| e.starts_with("auth/")));
    assert!(g["config/mod.rs"].iter().any(|e| e.starts_with("config/")));
    assert!(paths("use crate::a::b; super::c::D; use super::{e, f}").len() == 3);
}

/// Functions (from `fn` to the closing brace at the same indent, as rustfmt writes them)
/// longer than `max` lines in files under `dir`.
fn long_functions(dir: &str, max: usize) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    for (file, src) in sources() {
        if !file.starts_with(dir) {
            continue;
        }
        let lines: Vec<&str> = src.text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(super) fn ",
                "pub(crate) fn ",
                "async fn ",
                "pub async fn ",
            ]
            .iter()
            .any(|p| t.starts_with(p));
            if !is_fn || t.ends_with(';') {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            if let Some(len) = lines[i..].iter().position(|x| *x == close) {
                if len + 1 > max {
                    let name = t.split('(').next().unwrap_or(t).to_string();
                    out.push((file.clone(), name, len + 1));
                }
            }
        }
    }
    out
}

#[test]
fn no_config_function_is_over_100_lines() {
    let long = long_functions("config/", 100);
    assert!(long.is_empty(), "config functions over 100 lines: {long:?}");
    // The measure itself finds functions.
    assert!(!long_functions("config/", 5).is_empty());
}
