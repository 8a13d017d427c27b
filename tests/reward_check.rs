//! Tasks end to end: a task file's data, prompts and rewards, through the same path as
//! `rlvr reward-check`. HumanEval's canonical solutions must all pass under CPython.

use rlvr::reward::check::{CheckOptions, run};
use std::path::{Path, PathBuf};

fn task(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tasks")
        .join(name)
}

fn options(completions: Option<&Path>) -> CheckOptions<'_> {
    CheckOptions {
        completions,
        limit: None,
        show_slowest: 3,
        show_failures: 5,
    }
}

#[test]
fn humaneval_canonical_solutions_all_pass() {
    let report = run(&task("humaneval.yaml"), &options(None)).unwrap();
    assert_eq!(report.records, 164);
    assert_eq!(
        report.verdicts.get("pass"),
        Some(&164),
        "{:?}",
        report.verdicts
    );
    assert_eq!(report.infra_errors, 0);
}

#[test]
fn arithmetic_references_score_full_marks() {
    let report = run(&task("arithmetic.yaml"), &options(None)).unwrap();
    assert_eq!(report.records, 5000);
    for (name, mean) in &report.means {
        assert_eq!(*mean, 1.0, "{name}");
    }
}

#[test]
fn given_completions_are_scored_against_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let completions = dir.path().join("completions.jsonl");
    let lines = [
        // Correct, wrong, gaming attempt, no code at all, on HumanEval/2 (truncate_number).
        r#"{"index": 2, "completion": "```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```"}"#,
        r#"{"index": 2, "completion": "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"}"#,
        r#"{"index": 2, "completion": "```python\nimport sys\nsys.exit(0)\n```"}"#,
        r#"{"index": 2, "completion": "I cannot solve this."}"#,
    ];
    std::fs::write(&completions, lines.join("\n")).unwrap();
    let report = run(&task("humaneval.yaml"), &options(Some(&completions))).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(
        report.means[0].1, 0.25,
        "only the correct completion scores"
    );
    assert_eq!(report.verdicts.get("pass"), Some(&1));
    assert_eq!(
        report.verdicts.get("fail"),
        Some(&2),
        "{:?}",
        report.verdicts
    );
    assert_eq!(
        report.verdicts.get("error"),
        Some(&1),
        "no code is an error verdict: {:?}",
        report.verdicts
    );

    std::fs::write(&completions, r#"{"index": 999, "completion": "x"}"#).unwrap();
    let error = run(&task("humaneval.yaml"), &options(Some(&completions)))
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("index 999 is past the 164 records"),
        "{error}"
    );
}
