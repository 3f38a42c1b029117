//! The engine's top-level modules depend on each other without a cycle.
//!
//! A module is a file `src/x.rs` or a folder `src/x/` (`lib.rs` and `bin/` are the roots that
//! re-export or drive everything, so they are left out). Module `a` depends on `b` when its
//! code names `crate::b` (also inside `use crate::{b, ...}` groups and doc links); the bodies
//! of `#[cfg(test)] mod` blocks are ignored, since tests may reach anywhere.
//! `engine/ARCHITECTURE.md` draws the graph this test keeps acyclic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Top-level modules of `src` and the source files of each.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        if name == "lib.rs" || name == "main.rs" || name == "bin" {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".rs") {
            out.insert(stem.to_string(), vec![path]);
        } else if path.is_dir() {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            out.insert(name, files);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` with the body of every `#[cfg(test)] mod name { ... }` removed.
fn strip_test_modules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let is_mod = ["mod ", "pub mod ", "pub(crate) mod "]
            .iter()
            .any(|p| item.starts_with(p));
        let open = item.find(['{', ';']);
        match open {
            Some(o) if is_mod && item.as_bytes()[o] == b'{' => {
                let body_end = matching_brace(&item[o..]).map_or(item.len(), |e| o + e + 1);
                rest = &item[body_end..];
            }
            _ => {
                out.push_str("#[cfg(test)]");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Byte index of the brace closing the one `s` starts with; string and char literals and
/// comments do not count.
fn matching_brace(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A char literal ('{', '\n'); a lifetime ('a) has no closing quote right after.
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                while i + 1 < b.len() && b[i + 1] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// First path segments after every `crate::` in `text`, including the members of
/// `crate::{a, b::c}` groups.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `$crate::` or a longer identifier ending in `crate`
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Members split at the group's own commas; nested groups belong to their member.
            let mut depth = 0usize;
            let mut member_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => member_start = true,
                    c if member_start && !c.is_whitespace() => {
                        member_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            out.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The `crate::x` graph among the modules of `src`.
fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let mut g = Graph::new();
    for (name, files) in &mods {
        let mut deps = BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(f).expect("read source");
            deps.extend(
                crate_refs(&strip_test_modules(&text))
                    .into_iter()
                    .filter(|d| d != name && mods.contains_key(d)),
            );
        }
        g.insert(name.clone(), deps);
    }
    g
}

/// Every strongly connected group of more than one module (Tarjan), each sorted.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.g.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in g.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found.sort();
    walk.found
}

fn render(g: &Graph) -> String {
    g.iter()
        .map(|(m, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("  {m} -> {}\n", deps.join(", "))
        })
        .collect()
}

#[test]
fn engine_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(
        g.contains_key("db") && g.contains_key("state") && g.contains_key("blobstore"),
        "the scan found the engine's modules: {:?}",
        g.keys().collect::<Vec<_>>()
    );
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "module cycles in engine/src: {}\nthe graph:\n{}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("; "),
        render(&g)
    );
}

#[test]
fn the_detector_names_a_cycle_and_ignores_test_modules() {
    let edges = |pairs: &[(&str, &[&str])]| -> Graph {
        pairs
            .iter()
            .map(|(m, ds)| (m.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    };
    // a -> b -> c -> a is one cycle; d only leads into it; e -> f -> e is a second one.
    let g = edges(&[
        ("a", &["b"]),
        ("b", &["c"]),
        ("c", &["a"]),
        ("d", &["a"]),
        ("e", &["f"]),
        ("f", &["e", "d"]),
    ]);
    assert_eq!(
        cycles(&g),
        vec![vec!["a", "b", "c"], vec!["e", "f"]],
        "every cycle is named"
    );
    let dag = edges(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]);
    assert!(cycles(&dag).is_empty());

    let source = r#"
use crate::{keydir::Loc, record, error::{Error, Result}};
use crate::state::Core;
fn f() { let _ = '{'; let _ = "}"; }
#[cfg(test)]
mod tests {
    use crate::db::Db;
    fn g() { let _ = "{"; }
}
fn h() -> crate::blobstore::BlobId { 0 }
"#;
    let refs = crate_refs(&strip_test_modules(source));
    let want: BTreeSet<String> = ["keydir", "record", "error", "state", "blobstore"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want, "test-module references are left out");
}
