//! A guard of the crate's layering: no module imports a module that
//! imports it back (directly or through others).
//!
//! Every `.rs` file under `src/` is a module. Its imports are the paths it
//! names (`use crate::…`, `use super::…`, or a path written inline),
//! outside comments and its `#[cfg(test)] mod tests`. A path resolves to
//! the deepest module file it names: `crate::ingest::wire::Batch` is the
//! module `ingest::wire`; `super::streams::Registration` written in
//! `ingest/session.rs` is `ingest::streams`; a path that names an item of
//! a folder (`crate::runtime::Runtime`, re-exported by `runtime/mod.rs`)
//! counts as naming every module of that folder. A parent's `mod` and `pub
//! use` lines of its own children are its face, not imports, so a parent
//! may re-export what its children define, but a child may not import its
//! parent's items.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`ingest::session`) of every file under `dir`, with its text.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if name != "mod" && name != "lib" {
                p.push(name);
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            out.insert(p, text);
        }
    }
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths written in `code` that start with `crate::` or `super::`,
/// `use` groups (`a::{b, c::d}`) expanded.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let starts = (rest.starts_with("crate::") || rest.starts_with("super::"))
            && (i == 0
                || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':'));
        if !starts {
            i += 1;
            continue;
        }
        // Read up to the end of the path, a group included.
        let mut j = i;
        let mut depth = 0;
        while j < bytes.len() {
            let c = bytes[j];
            if c == '{' {
                depth += 1;
            } else if c == '}' {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            } else if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') {
                break;
            }
            j += 1;
        }
        let path: String = bytes[i..j].iter().collect();
        expand(&path.replace(char::is_whitespace, ""), &mut out);
        i = j.max(i + 1);
    }
    out
}

fn expand(path: &str, out: &mut Vec<String>) {
    match path.find('{') {
        None => out.push(path.trim_end_matches("::").to_owned()),
        Some(open) => {
            let (head, group) = (&path[..open], &path[open + 1..path.len().saturating_sub(1)]);
            let mut depth = 0;
            let mut start = 0;
            let group: Vec<char> = group.chars().collect();
            for (k, c) in group.iter().enumerate() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let part: String = group[start..k].iter().collect();
                        expand(&format!("{head}{part}"), out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            let part: String = group[start..].iter().collect();
            if !part.is_empty() {
                expand(&format!("{head}{part}"), out);
            }
        }
    }
}

/// The module a path written in `from` names: the deepest existing module.
fn resolve(
    from: &[String],
    is_folder: bool,
    path: &str,
    known: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut segs = path.split("::").filter(|s| !s.is_empty() && *s != "self");
    let mut base: Vec<String> = match segs.next()? {
        "crate" => Vec::new(),
        "super" => {
            // `super` of a folder's mod.rs is the folder's parent.
            let mut b = from.to_vec();
            if !is_folder || !b.is_empty() {
                b.pop();
            }
            b
        }
        _ => return None,
    };
    for s in segs {
        let mut next = base.clone();
        next.push(s.to_owned());
        if known.contains(&next) {
            base = next;
        } else {
            break;
        }
    }
    Some(base)
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&src, &[], &mut files);
    let known: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let folders: BTreeSet<Vec<String>> = known
        .iter()
        .filter(|m| m.is_empty() || src.join(m.join("/")).is_dir())
        .cloned()
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &files {
        let code = code(text);
        for path in paths(&code) {
            let Some(target) = resolve(module, folders.contains(module), &path, &known) else {
                continue;
            };
            // A parent naming its own children (its `mod` / `pub use` face)
            // is not an import; a module naming itself neither.
            if target == *module || target.starts_with(module) {
                continue;
            }
            // A folder's items are its children's, re-exported: naming the
            // folder names all of them (conservatively).
            let targets: Vec<Vec<String>> = if folders.contains(&target) {
                known
                    .iter()
                    .filter(|k| k.starts_with(&target) && *k != module)
                    .cloned()
                    .collect()
            } else {
                vec![target]
            };
            edges.entry(module.clone()).or_default().extend(targets);
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    if std::env::var_os("SLUICE_PRINT_LAYERS").is_some() {
        for (m, to) in &edges {
            let to: Vec<String> = to.iter().map(|t| t.join("::")).collect();
            eprintln!("{} -> {}", m.join("::"), to.join(", "));
        }
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        let name = |m: &Vec<String>| {
            if m.is_empty() {
                "crate".to_owned()
            } else {
                m.join("::")
            }
        };
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let cycle: Vec<String> = cycle.iter().map(name).collect();
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The guard sees the crate: the layers are there and connected.
    let builder = ["server".to_owned(), "builder".to_owned()];
    let imports = edges.get(builder.as_slice()).expect("the builder imports");
    assert!(imports.contains(&vec!["ingest".to_owned()]), "{imports:?}");
    assert!(edges.len() > 20, "{} modules with imports", edges.len());
}
