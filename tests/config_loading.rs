//! Config loading: valid files, typos, wrong types, missing and empty files, and the
//! configs and tasks shipped in the repository.

use rlvr::config::run::{LossType, ScaleRewards};
use rlvr::config::{ConfigError, RunConfig, TaskConfig};
use std::path::{Path, PathBuf};

const VALID_RUN: &str = "\
name: tiny
seed: 7
model:
  path: runs/tiny/model
task: tasks/arithmetic.yaml
optim:
  learning_rate: 1.0e-5
rl:
  num_generations: 4
  beta: 0.04
  epsilon_high: 0.28
  loss_type: dr_grpo
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run_error(text: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.yaml", text);
    RunConfig::load(&path).expect_err("the config should be rejected")
}

#[test]
fn valid_run_config_fills_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig::load(&write(dir.path(), "run.yaml", VALID_RUN)).unwrap();
    assert_eq!(config.seed, 7);
    assert_eq!(config.optim.learning_rate, 1e-5);
    assert_eq!(config.optim.max_grad_norm, 1.0, "default kept");
    let rl = config.rl.as_ref().expect("rl section");
    assert_eq!(rl.num_generations, 4);
    assert_eq!(rl.loss_type, LossType::DrGrpo);
    assert_eq!(rl.scale_rewards, ScaleRewards::Group, "TRL's default");
    assert_eq!(rl.epsilon_high(), 0.28);
    assert_eq!(config.run_dir(), Path::new("runs/tiny"));
}

#[test]
fn typo_names_key_line_and_suggestion() {
    let error = run_error(&VALID_RUN.replace("num_generations: 4", "num_generation: 4"));
    assert_eq!(error.key_path, "rl.num_generation");
    assert_eq!(error.line_column.map(|(line, _)| line), Some(9));
    assert_eq!(error.suggestion.as_deref(), Some("num_generations"));
    let shown = error.to_string();
    assert!(shown.contains("run.yaml:9:"), "{shown}");
    assert!(shown.contains("unknown field `num_generation`"), "{shown}");
    assert!(shown.contains("did you mean `num_generations`?"), "{shown}");
}

#[test]
fn misspelt_enum_value_gets_a_suggestion() {
    let error = run_error(&VALID_RUN.replace("loss_type: dr_grpo", "loss_type: dr_grp"));
    assert_eq!(error.key_path, "rl.loss_type");
    assert_eq!(error.suggestion.as_deref(), Some("dr_grpo"));
}

#[test]
fn wrong_type_names_key_path_and_line() {
    let error = run_error(&VALID_RUN.replace("beta: 0.04", "beta: a lot"));
    assert_eq!(error.key_path, "rl.beta");
    assert_eq!(error.line_column.map(|(line, _)| line), Some(10));
    assert!(error.message.contains("invalid type"), "{}", error.message);
    assert!(error.suggestion.is_none());
}

#[test]
fn out_of_range_value_is_reported_where_it_is() {
    let error = run_error(&VALID_RUN.replace("num_generations: 4", "num_generations: 0"));
    assert_eq!(error.key_path, "rl.num_generations");
    assert_eq!(error.line_column.map(|(line, _)| line), Some(9));
    assert!(error.message.contains("at least 1"), "{}", error.message);
}

#[test]
fn cross_key_rule_names_the_key() {
    let error = run_error(&VALID_RUN.replace("epsilon_high: 0.28", "epsilon_high: 0.1"));
    assert_eq!(error.key_path, "rl.epsilon_high");
    assert!(error.message.contains(">= rl.epsilon"), "{}", error.message);
}

#[test]
fn missing_required_key() {
    let error = run_error(&VALID_RUN.replace("name: tiny\n", ""));
    assert!(
        error.message.contains("missing field `name`"),
        "{}",
        error.message
    );
}

#[test]
fn missing_file_names_the_file() {
    let error = RunConfig::load(Path::new("no/such/config.yaml")).unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.starts_with("no/such/config.yaml: cannot read the file"),
        "{shown}"
    );
}

#[test]
fn empty_file_is_a_clear_error() {
    for text in ["", "\n\n", "# just a comment\n---\n"] {
        let error = run_error(text);
        assert!(
            error.message.contains("the file is empty"),
            "{text:?}: {}",
            error.message
        );
    }
}

#[test]
fn task_reward_list_errors_carry_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
name: t
source:
  generator: arithmetic
prompt: '{question}'
rewards:
  - kind: math
  - kind: format
    wieght: 0.1
";
    let error = TaskConfig::load(&write(dir.path(), "task.yaml", text)).unwrap_err();
    assert_eq!(error.key_path, "rewards[1].wieght");
    assert_eq!(error.line_column.map(|(line, _)| line), Some(8));
    assert_eq!(error.suggestion.as_deref(), Some("weight"));
}

#[test]
fn task_source_needs_exactly_one_origin() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: t\nsource:\n  seed: 3\nprompt: x\nrewards:\n  - kind: exact\n";
    let error = TaskConfig::load(&write(dir.path(), "task.yaml", text)).unwrap_err();
    assert_eq!(error.key_path, "source");
}

/// Every YAML file the repository ships must load.
#[test]
fn shipped_configs_and_tasks_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for (folder, is_task) in [("configs", false), ("tasks", true)] {
        for entry in walk(&root.join(folder)) {
            if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                if is_task {
                    TaskConfig::load(&entry).unwrap_or_else(|e| panic!("{e}"));
                } else {
                    RunConfig::load(&entry).unwrap_or_else(|e| panic!("{e}"));
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "found only {checked} shipped YAML files");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn reward_keys_must_belong_to_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let task = |rewards: &str| {
        let text = format!(
            "name: t\nsource:\n  generator: arithmetic\nprompt: x\nanswer_field: answer\nrewards:\n{rewards}"
        );
        TaskConfig::load(&write(dir.path(), "task.yaml", &text))
    };
    let error = task("  - kind: math\n    pattern: 'x'\n").unwrap_err();
    assert_eq!(error.key_path, "rewards[0]");
    assert!(
        error
            .message
            .contains("`pattern` does not apply to kind `math`"),
        "{}",
        error.message
    );
    let error = task("  - kind: regex\n").unwrap_err();
    assert!(
        error.message.contains("needs a `pattern`"),
        "{}",
        error.message
    );
    let error = task("  - kind: overlong\n    max_length: 10\n    cache_length: 10\n").unwrap_err();
    assert!(
        error.message.contains("smaller than `max_length`"),
        "{}",
        error.message
    );
    let error = task("  - kind: code\n    runtime: pypy\n").unwrap_err();
    assert_eq!(error.key_path, "rewards[0].runtime");
    let ok = task("  - kind: code\n    runtime: micropython\n    scoring: fraction\n    fuel: 1000000\n  - kind: math\n    tolerance: 0.01\n").unwrap();
    assert_eq!(ok.rewards.len(), 2);
}
