//! Helpers shared by the training tests: tiny models, the digit task, configs written
//! on the fly, and reading a run's metrics.
#![allow(dead_code)] // each test crate uses a part of them

use rlvr::config::run::Dtype;
use rlvr::model::{Model, ModelConfig};
use rlvr::run::RunDir;
use rlvr::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The seed of the tests' models and runs: `default`, or `RLVR_TEST_SEED` when set, so
/// that thresholds can be re-checked under other seeds (`RLVR_TEST_SEED=3 cargo test
/// --test rl`).
pub fn test_seed(default: u64) -> u64 {
    std::env::var("RLVR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A tokenizer and a random tiny Qwen2 in `dir/model`, made once per folder (two runs
/// that compare their metrics start from this one folder).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model_dir = dir.join("model");
    if model_dir.join("model.safetensors").exists() {
        return model_dir;
    }
    let corpus = (0..300).map(|i| format!("What is {i} + {}? #### {}", i * 3, i * 4));
    let tokenizer = Tokenizer::train_bpe(corpus, 300).unwrap();
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path).unwrap();
    let config = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 32, 1, 4);
    let model = Model::random(&config, tch::Device::Cpu, Dtype::F32, test_seed(0)).unwrap();
    model.save(&model_dir, Some(&tokenizer_path)).unwrap();
    model_dir
}

/// A task whose reward is 1 when the completion holds a digit: reachable by a random
/// model some of the time, so GRPO has a signal to amplify.
pub fn digit_task(dir: &Path) -> PathBuf {
    let path = dir.join("digits.yaml");
    std::fs::write(
        &path,
        r#"name: digits
source:
  generator: arithmetic
  num_examples: 64
prompt: "{question}"
answer_field: answer
rewards:
  - kind: regex
    name: has_digit
    pattern: '(?s).*[0-9].*'
"#,
    )
    .unwrap();
    path
}

pub fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, body).unwrap();
    path
}

/// An RL config on the digit task for a fresh tiny model; `extra_rl` and `train` are
/// extra lines of those sections.
pub fn rl_config(dir: &Path, output: &str, extra_rl: &str, train: &str, lr: f64) -> PathBuf {
    let model = tiny_model(dir);
    let task = digit_task(dir);
    let body = format!(
        r#"name: rl
output_dir: {output}
seed: {seed}
model:
  path: {model}
task: {task}
optim:
  learning_rate: {lr}
  lr_scheduler: constant
train:
  {train}
  batch_size: 16
  sample_log_steps: 2
  # Bit-for-bit comparisons between runs need a fixed libtorch thread count.
  threads: 2
rl:
  prompts_per_step: 4
  num_generations: 8
  max_completion_length: 6
  {extra_rl}
"#,
        output = dir.join(output).display(),
        seed = test_seed(7),
        model = model.display(),
        task = task.display(),
    );
    write_config(dir, output, &body)
}

pub fn metrics(run_dir: &Path) -> Vec<Value> {
    RunDir::read_metrics(run_dir).unwrap()
}

pub fn mean(rows: &[Value], key: &str) -> f64 {
    rows.iter().map(|m| m[key].as_f64().unwrap()).sum::<f64>() / rows.len() as f64
}

/// Everything but wall times.
pub fn comparable(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .map(|mut row| {
            let object = row.as_object_mut().unwrap();
            object.retain(|key, _| !key.starts_with("time/"));
            row
        })
        .collect()
}

/// A test whose optional tool (transformers, Chromium) is missing skips with a line
/// saying so, except under `RLVR_REQUIRE_ALL=1` (set by CI), where it fails: CI must
/// not pass by skipping.
pub fn skip_unless_required(why: &str) {
    if std::env::var("RLVR_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{why}, and RLVR_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("SKIPPED: {why}");
}
