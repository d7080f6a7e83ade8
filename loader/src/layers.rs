//! The shape of the source, checked: every layer imports only from the
//! layers before it ([`crate::LAYERS`]), so no two modules import each other
//! in a circle; no function is longer than 100 lines; `main.rs` stays tiny.
use std::{fs, path::Path};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every .rs file below `dir`, with its path relative to src/.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).expect("reading loader/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(SRC)
                .expect("below src")
                .to_string_lossy()
                .into_owned();
            out.push((rel, fs::read_to_string(&path).expect("reading a source file")));
        }
    }
}

/// The top-level modules a source names through `crate::` paths,
/// `crate::a::b` and `crate::{a, b::{c}}` alike.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.push(name);
                        start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

fn layer_of(rel: &str) -> Option<usize> {
    let top = rel.split('/').next()?.trim_end_matches(".rs");
    crate::LAYERS.iter().position(|l| *l == top)
}

#[test]
fn each_layer_imports_only_from_the_layers_before_it() {
    let mut files = Vec::new();
    sources(Path::new(SRC), &mut files);
    let mut wrong = Vec::new();
    for (rel, text) in &files {
        let Some(own) = layer_of(rel) else { continue };
        for r in crate_refs(text) {
            match crate::LAYERS.iter().position(|l| *l == r) {
                Some(i) if i <= own => {}
                Some(_) => wrong.push(format!("{rel} imports crate::{r}, a later layer")),
                None if r == "LAYERS" => {}
                None => wrong.push(format!("{rel} names crate::{r}, which is no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The layers are exactly the modules of lib.rs.
    let lib = fs::read_to_string(Path::new(SRC).join("lib.rs")).expect("lib.rs");
    let mut mods: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    let mut layers = crate::LAYERS.to_vec();
    mods.sort_unstable();
    layers.sort_unstable();
    assert_eq!(mods, layers);
}

#[test]
fn crate_references_are_found_in_groups_and_paths() {
    let text = "use crate::{a, b::{c, d}, e::f};\nlet x = crate::g::h();";
    assert_eq!(crate_refs(text), ["a", "b", "e", "g"]);
}

/// (name, lines) of every function in `text`: from its `fn` line to the
/// closing brace at the same indentation (rustfmt's layout).
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let decl = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "unsafe fn ",
            "pub unsafe fn ",
        ]
        .iter()
        .find_map(|p| body.strip_prefix(p));
        let Some(decl) = decl else { continue };
        if line.trim_end().ends_with(';') {
            continue; // a declaration without a body
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[i + 1..].iter().position(|l| *l == close) {
            let name = decl.split(['(', '<']).next().unwrap_or(decl).to_string();
            out.push((name, end + 2));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_100_lines_and_main_is_tiny() {
    let mut files = Vec::new();
    sources(Path::new(SRC), &mut files);
    let mut long = Vec::new();
    for (rel, text) in &files {
        for (name, n) in functions(text) {
            if n > 100 {
                long.push(format!("{rel}: fn {name} has {n} lines"));
            }
        }
        if rel == "main.rs" {
            assert!(
                text.lines().count() < 120,
                "main.rs has {} lines",
                text.lines().count()
            );
        }
    }
    assert!(long.is_empty(), "functions over 100 lines:\n{}", long.join("\n"));
}
