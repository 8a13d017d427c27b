//! A grader failure is a missing score, never a wrong answer: RL leaves it out of the
//! update and stops past `rl.max_ungraded_rate`, eval refuses to print an accuracy over
//! it, a failing weight-0 reward does not touch the total, and saved eval results are
//! never reused once the task or its data changed.

mod common;

use common::{metrics, rl_config, tiny_model};
use rlvr::config::RunConfig;
use rlvr::config::run::Dtype;
use rlvr::config::task::{Reads, ReasoningTags};
use rlvr::eval::{self, EvalSettings};
use rlvr::model::Model;
use rlvr::reward::{RewardFunction, RewardSet, Sample, Score};
use rlvr::train::{self, StartOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A reward script that crashes (a grader bug) on completions holding a digit and pays 1
/// for the others.
const CRASHES_ON_DIGITS: &str = r#"
import json, sys
record = json.loads(sys.stdin.read())
if any(c.isdigit() for c in record["completion"]):
    raise ValueError("grader bug")
print(json.dumps({"score": 1.0, "reason": "no digit"}))
"#;

/// A task on the arithmetic prompts with `rewards` (YAML list items) and the script above.
fn task(dir: &Path, name: &str, rewards: &str) -> PathBuf {
    std::fs::write(dir.join("crashes_on_digits.py"), CRASHES_ON_DIGITS).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    let body = format!(
        "name: {name}\nsource: {{generator: arithmetic, num_examples: 16}}\nprompt: \"{{question}}\"\n\
         answer_field: answer\nrewards:\n{rewards}"
    );
    std::fs::write(&path, body).unwrap();
    path
}

const SCRIPT: &str = "  - {kind: script, script: crashes_on_digits.py, runtime: micropython}\n";

fn weights(model: &Path) -> Vec<(String, Vec<f32>)> {
    let model = Model::load(model, tch::Device::Cpu, Dtype::F32).unwrap();
    let mut named: Vec<(String, Vec<f32>)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, Vec::<f32>::try_from(t.reshape(-1)).unwrap()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// The RL config of the digit test task, with its task swapped for `task`.
fn rl_on(dir: &Path, output: &str, task: &Path, extra_rl: &str) -> RunConfig {
    let path = rl_config(dir, output, extra_rl, "max_steps: 3", 2e-2);
    let mut config = RunConfig::load(&path).unwrap();
    config.task = Some(task.to_path_buf());
    config
}

#[test]
fn ungraded_completions_leave_the_update_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), "crashy", SCRIPT);
    // Every graded completion scores 1: with the crashes left out no group has spread,
    // so nothing is learned. Counted as 0 (a wrong answer), they would teach the model
    // to avoid digits.
    let config = rl_on(
        dir.path(),
        "out",
        &task,
        "beta: 0.0\n  max_ungraded_rate: 1.0",
    );
    let model = train::rl(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    let ungraded: f64 = rows.iter().map(|r| r["ungraded"].as_f64().unwrap()).sum();
    assert!(
        ungraded > 0.0,
        "the tiny model writes digits sometimes: {rows:?}"
    );
    for row in &rows {
        assert_eq!(row["reward"].as_f64(), Some(1.0), "graded ones only: {row}");
    }
    assert_eq!(
        weights(&model),
        weights(&tiny_model(dir.path())),
        "no signal, no change"
    );
    let samples = std::fs::read_to_string(config.run_dir().join("samples.jsonl")).unwrap();
    let logged: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let crashed = logged
        .iter()
        .find(|s| s["ungraded"].is_string())
        .expect("samples.jsonl says which completions were not graded");
    assert!(crashed["reward"].is_null(), "{crashed}");
    assert!(crashed["ungraded"].as_str().unwrap().contains("grader bug"));
}

#[test]
fn an_rl_run_stops_when_too_many_completions_are_ungraded() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), "crashy", SCRIPT);
    for extra in ["beta: 0.0", "algorithm: ppo\n  beta: 0.0"] {
        let config = rl_on(dir.path(), "stop", &task, extra);
        let options = StartOptions {
            overwrite: true,
            ..StartOptions::default()
        };
        let error = format!("{:#}", train::rl(&config, options).unwrap_err());
        assert!(
            error.contains("could not be graded")
                && error.contains("rl.max_ungraded_rate = 0.05")
                && error.contains("grader bug"),
            "{extra}: {error}"
        );
        // What was sampled before the stop is in samples.jsonl.
        assert!(config.run_dir().join("samples.jsonl").exists(), "{extra}");
    }
}

#[test]
fn eval_refuses_an_accuracy_over_ungraded_completions() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let rewards =
        format!("  - {{kind: regex, name: has_digit, pattern: '(?s).*[0-9].*'}}\n{SCRIPT}");
    let task = task(dir.path(), "crashy", &rewards);
    let settings = EvalSettings {
        limit: Some(16),
        samples: 2,
        max_new_tokens: 6,
        ..EvalSettings::default()
    };
    let Err(error) = eval::evaluate(&model, &task, &settings) else {
        panic!("an accuracy over ungraded completions");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("could not be graded") && error.contains("no accuracy is reported"),
        "{error}"
    );
    let out = eval::results_dir(&model, "crashy");
    assert!(
        out.join("items.jsonl").exists(),
        "per-item results are kept"
    );
    assert!(!out.join("summary.json").exists(), "nothing to reuse");
    // compare goes through the same evaluation: no p-value over ungraded items.
    let Err(error) = rlvr::compare::compare(&[model.clone(), model], &task, &settings) else {
        panic!("a comparison over ungraded completions");
    };
    assert!(
        format!("{error:#}").contains("could not be graded"),
        "{error:#}"
    );
}

#[test]
fn saved_eval_results_are_recomputed_when_the_task_changes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let digits = "  - {kind: regex, name: has_digit, pattern: '(?s).*'}\n";
    let task = task(dir.path(), "digits", digits);
    let settings = EvalSettings {
        limit: Some(16),
        samples: 0,
        max_new_tokens: 6,
        ..EvalSettings::default()
    };
    let first = eval::evaluate(&model, &task, &settings).unwrap();
    assert!(!first.reused);
    let again = eval::evaluate(&model, &task, &settings).unwrap();
    assert!(again.reused, "same inputs: reused");
    assert_eq!(again.summary.accuracy, first.summary.accuracy);
    assert_eq!(first.summary.mean_rewards["has_digit"], 1.0);

    // A format that never matches: the reward must drop to 0, not come from the cache.
    let never = "  - {kind: regex, name: has_digit, pattern: 'never matches this'}\n";
    std::fs::write(
        &task,
        std::fs::read_to_string(&task)
            .unwrap()
            .replace(digits, never),
    )
    .unwrap();
    let changed = eval::evaluate(&model, &task, &settings).unwrap();
    assert!(!changed.reused);
    assert_eq!(changed.summary.mean_rewards["has_digit"], 0.0);

    // Other records (a different generator seed) are other results too.
    let text = std::fs::read_to_string(&task).unwrap();
    std::fs::write(
        &task,
        text.replace("num_examples: 16", "num_examples: 16, seed: 5"),
    )
    .unwrap();
    let reseeded = eval::evaluate(&model, &task, &settings).unwrap();
    assert!(!reseeded.reused);
    assert_ne!(reseeded.items[0].prompt, changed.items[0].prompt);
}

/// A reward that returns the same value for every completion.
struct Constant(f64);

impl RewardFunction for Constant {
    fn score(&self, _: &Sample) -> Score {
        Score::new(self.0, "constant")
    }
}

#[test]
fn a_nan_gold_reward_does_not_poison_the_total_and_a_nan_weighted_one_is_ungraded() {
    let set = |gold: f64, counted: f64| RewardSet {
        functions: vec![
            (
                "correct".into(),
                1.0,
                Box::new(Constant(counted)) as Box<dyn RewardFunction>,
            ),
            ("gold".into(), 0.0, Box::new(Constant(gold))),
        ],
        reads: vec![Reads::Answer; 2],
        reasoning: ReasoningTags::default(),
        gold: vec![1],
        proxy: vec![],
    };
    let record = json!({});
    let sample = Sample::new(&record, "p", "c", 1);
    let scored = set(f64::NAN, 1.0).score_batch(std::slice::from_ref(&sample));
    assert_eq!(scored[0].total, 1.0);
    assert!(scored[0].graded());
    assert!(
        scored[0].per_function[1].infra_error.is_some(),
        "NaN is a grader failure"
    );

    let scored = set(0.5, f64::NAN).score_batch(std::slice::from_ref(&sample));
    assert!(!scored[0].graded() && scored[0].total.is_nan());
    assert!(!scored[0].solved());
}
