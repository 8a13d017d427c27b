//! The module graph of docs/ARCHITECTURE.md, checked: each top-level module of `src/`
//! may name only the modules its row allows (`crate::X` anywhere in its files). Data
//! flows one way, so no arrow points back up and there are no cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it may use. Keep in step with docs/ARCHITECTURE.md.
const ALLOWED: &[(&str, &[&str])] = &[
    ("types", &[]),
    ("cache", &[]),
    ("build_info", &[]),
    ("allocator", &[]),
    ("config", &["types"]),
    ("tokenizer", &[]),
    ("data", &["config", "tokenizer"]),
    ("model", &["types"]),
    ("sample", &["model", "tokenizer"]),
    (
        "reward",
        &["types", "cache", "config", "data", "model", "tokenizer"],
    ),
    ("run", &["config", "build_info"]),
    (
        "train",
        &[
            "types",
            "config",
            "data",
            "model",
            "sample",
            "reward",
            "run",
            "tokenizer",
        ],
    ),
    (
        "eval",
        &[
            "types",
            "build_info",
            "config",
            "data",
            "model",
            "reward",
            "sample",
            "tokenizer",
        ],
    ),
    ("compare", &["eval", "run"]),
    (
        "inspect",
        &["types", "config", "model", "sample", "tokenizer"],
    ),
    ("env_report", &["cache", "build_info"]),
    (
        "bench",
        &[
            "allocator",
            "types",
            "cache",
            "config",
            "data",
            "model",
            "reward",
            "run",
            "sample",
            "tokenizer",
            "train",
        ],
    ),
    (
        "demo",
        &[
            "types",
            "config",
            "data",
            "tokenizer",
            "train",
            "eval",
            "compare",
            "run",
            "env_report",
        ],
    ),
    (
        "cli",
        &[
            "allocator",
            "types",
            "cache",
            "config",
            "data",
            "model",
            "sample",
            "reward",
            "run",
            "train",
            "eval",
            "compare",
            "inspect",
            "bench",
            "demo",
            "env_report",
            "tokenizer",
        ],
    ),
];

/// The top-level module a file belongs to: `src/X.rs` or `src/X/...`.
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let relative = path.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy();
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::NAME` a file mentions outside comments.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups are not used in this code base; a name is enough.
            if !name.is_empty() {
                names.insert(name);
            }
            rest = after;
        }
    }
    names
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_only_use_the_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let Some(module) = module_of(&file, &src) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(may_use) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` is not in the table",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in crate_paths(&text) {
            if used != module && !may_use.contains(&used.as_str()) {
                wrong.push(format!("{}: `{module}` uses `{used}`", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against docs/ARCHITECTURE.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_table_has_no_cycles() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Each module's row may name only modules listed above it.
    let order: Vec<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    for (i, (module, uses)) in ALLOWED.iter().enumerate() {
        for used in *uses {
            let at = order.iter().position(|m| m == used);
            assert!(
                at.is_some_and(|at| at < i) && allowed.contains_key(used),
                "`{module}` may use `{used}`, which is not listed above it"
            );
        }
    }
}
