//! RL end to end on tiny models: GRPO and PPO raise a reward, a killed run resumes to the
//! metrics of one that never stopped, and PPO's separate critic trains apart.

mod common;

use common::{comparable, mean, metrics, rl_config};
use rlvr::config::RunConfig;
use rlvr::config::run::Dtype;
use rlvr::model::Model;
use rlvr::run::RunDir;
use rlvr::train::{self, StartOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn grpo_raises_the_reward_of_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = rl_config(dir.path(), "out", "beta: 0.0", "max_steps: 24", 2e-2);
    let config = RunConfig::load(&path).unwrap();
    let final_model = train::rl(&config, StartOptions::default()).unwrap();
    assert!(final_model.join("model.safetensors").exists());
    let rows = metrics(&config.run_dir());
    assert_eq!(rows.len(), 24);
    let (first, last) = (mean(&rows[..6], "reward"), mean(&rows[18..], "reward"));
    eprintln!("mean reward: first 6 steps {first:.3}, last 6 steps {last:.3}");
    // Over seeds 0-8 the first steps score 0.25-0.47 and the last 0.995-1.
    assert!(
        last > 0.9 && last > first + 0.3,
        "mean reward went from {first:.3} to {last:.3}"
    );
    for key in [
        "reward_std",
        "rewards/has_digit/mean",
        "accuracy",
        "entropy",
        "frac_reward_zero_std",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "completions/max_length",
        "completions/reasoning_length",
        "completions/answer_length",
        "completions/unclosed_reasoning_ratio",
        "grad_norm",
        "learning_rate",
        "time/sample",
        "time/score",
        "time/update",
    ] {
        assert!(
            rows[0].get(key).is_some(),
            "metrics lack {key}: {}",
            rows[0]
        );
    }
    for row in &rows {
        let parts = row["completions/reasoning_length"].as_f64().unwrap()
            + row["completions/answer_length"].as_f64().unwrap();
        let whole = row["completions/mean_length"].as_f64().unwrap();
        assert!((parts - whole).abs() < 1e-9, "{row}");
    }
    let samples = std::fs::read_to_string(config.run_dir().join("samples.jsonl")).unwrap();
    let first: Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    for key in [
        "prompt",
        "completion",
        "reward",
        "advantage",
        "rewards",
        "reasoning_tokens",
    ] {
        assert!(first.get(key).is_some(), "samples lack {key}: {first}");
    }
    assert_eq!(
        samples.lines().count(),
        12 * 32,
        "every 2nd step, 32 completions"
    );
}

/// Runs the binary on `config`; with `kill_after`, kills it (SIGKILL) as soon as that
/// checkpoint exists.
fn run_cli(config: &Path, extra: &[&str], kill_after: Option<PathBuf>) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlvr"))
        .arg("rl")
        .arg(config)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    if let Some(checkpoint) = kill_after {
        while !checkpoint.exists() {
            if child.try_wait().unwrap().is_some() {
                panic!("the run ended before {} appeared", checkpoint.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        return false;
    }
    child.wait().unwrap().success()
}

#[test]
fn a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let rl = "beta: 0.04\n  num_iterations: 2\n  loss_type: grpo";
    let train = "max_steps: 8\n  save_steps: 2";
    let whole = rl_config(dir.path(), "whole", rl, train, 3e-3);
    assert!(run_cli(&whole, &[], None));
    let expected = comparable(metrics(&dir.path().join("whole/rl")));
    assert_eq!(expected.len(), 8);

    let killed = rl_config(dir.path(), "killed", rl, train, 3e-3);
    let run_dir = dir.path().join("killed/rl");
    run_cli(&killed, &[], Some(run_dir.join("checkpoint-000004")));
    assert!(
        !run_cli(&killed, &[], None),
        "a used run folder needs --resume"
    );
    assert!(run_cli(&killed, &["--resume"], None));
    let resumed = comparable(metrics(&run_dir));
    assert_eq!(resumed, expected, "metrics after resume differ");
    let samples = |d: &Path| std::fs::read_to_string(d.join("samples.jsonl")).unwrap();
    assert_eq!(samples(&run_dir), samples(&dir.path().join("whole/rl")));
    // The finished run under another learning rate: refused, unless asked for.
    let changed = rl_config(dir.path(), "killed", rl, train, 6e-3);
    assert!(
        !run_cli(&changed, &["--resume"], None),
        "a changed config needs --allow-config-change"
    );
    assert!(run_cli(
        &changed,
        &["--resume", "--allow-config-change"],
        None
    ));
}

#[test]
fn ppo_with_a_value_head_raises_the_reward_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rl = "algorithm: ppo\n  ppo: {num_ppo_epochs: 2, num_mini_batches: 2, kl_coef: 0.01, kl_target: 0.5}";
    let path = rl_config(
        dir.path(),
        "ppo",
        rl,
        "max_steps: 40\n  save_steps: 20",
        2e-2,
    );
    let config = RunConfig::load(&path).unwrap();
    let model = train::rl(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    let (first, last) = (mean(&rows[..8], "reward"), mean(&rows[32..], "reward"));
    eprintln!("PPO mean reward: first 8 steps {first:.3}, last 8 steps {last:.3}");
    // Over seeds 0-8 the first steps score 0.11-0.28 and the last 0.89-1.
    assert!(
        last > 0.75 && last > first + 0.3,
        "mean reward went from {first:.3} to {last:.3}"
    );
    for key in [
        "kl",
        "kl_coef",
        "policy/pg_loss",
        "value/vf_loss",
        "value/clipfrac",
        "policy/clipfrac",
        "values/mean",
    ] {
        assert!(
            rows[0].get(key).is_some(),
            "metrics lack {key}: {}",
            rows[0]
        );
    }
    // The adaptive controller moved the coefficient, and the value head is saved.
    assert_ne!(rows.last().unwrap()["kl_coef"].as_f64(), Some(0.01));
    let saved = Model::load(&model, tch::Device::Cpu, Dtype::F32).unwrap();
    assert!(saved.value_head.is_some());
    // Resuming from the step-20 checkpoint gives the same metrics.
    let expected = comparable(rows);
    let run = RunDir {
        dir: config.run_dir(),
    };
    std::fs::remove_dir_all(run.checkpoint_dir(40)).unwrap();
    train::rl(
        &config,
        StartOptions {
            resume: true,
            ..StartOptions::default()
        },
    )
    .unwrap();
    let resumed = comparable(metrics(&config.run_dir()));
    for (a, b) in resumed.iter().zip(&expected) {
        for (key, value) in b.as_object().unwrap() {
            assert_eq!(
                a.get(key),
                Some(value),
                "step {}: {key} differs after resume",
                b["step"]
            );
        }
    }
    assert_eq!(resumed.len(), expected.len());
}

#[test]
fn ppo_can_train_a_separate_critic() {
    let dir = tempfile::tempdir().unwrap();
    let rl = "algorithm: ppo\n  ppo: {num_ppo_epochs: 2, num_mini_batches: 1, critic: separate}";
    let path = rl_config(dir.path(), "critic", rl, "max_steps: 8", 2e-2);
    let config = RunConfig::load(&path).unwrap();
    let mut base = Model::load(
        config.model.path.as_ref().unwrap(),
        tch::Device::Cpu,
        Dtype::F32,
    )
    .unwrap();
    base.add_critic().unwrap();
    let variables = base.vs.variables();
    for (name, value) in &variables {
        if let Some(source) = name.strip_prefix("critic.") {
            assert!(value.equal(&variables[source]), "{name} is not a copy");
        }
    }
    let model = train::rl(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    assert!(
        rows.iter()
            .all(|r| r["value/vf_loss"].as_f64().unwrap().is_finite())
    );
    let saved = Model::load(&model, tch::Device::Cpu, Dtype::F32).unwrap();
    assert!(saved.critic.is_some() && saved.value_head.is_some());
    // The critic started as a copy of the policy and trained apart from it.
    let variables = saved.vs.variables();
    let name = "model.layers.0.mlp.up_proj.weight";
    let (policy, critic) = (&variables[name], &variables[&format!("critic.{name}")]);
    let difference = (policy - critic).abs().max().double_value(&[]);
    assert!(difference > 1e-4, "critic and policy weights are the same");
}

/// The model's own template opens a `<think>` block in the generation prompt unless
/// `enable_thinking` is false, as Qwen3's and R1's do.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}<think></think>{% else %}<think>{% endif %}{% endif %}";

#[test]
fn chat_template_kwargs_reach_the_prompts_and_an_open_think_block_has_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, kwargs: &str| -> (Vec<Value>, Value) {
        let path = rl_config(dir.path(), name, "beta: 0.0", "max_steps: 1", 1e-3);
        let body = std::fs::read_to_string(&path).unwrap() + kwargs;
        std::fs::write(&path, body).unwrap();
        let config = RunConfig::load(&path).unwrap();
        train::rl(&config, StartOptions::default()).unwrap();
        let samples = std::fs::read_to_string(config.run_dir().join("samples.jsonl")).unwrap();
        let first = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
        (metrics(&config.run_dir()), first)
    };
    // Without a template, kwargs have nothing to set: refused, naming them.
    let path = rl_config(dir.path(), "plain", "", "max_steps: 1", 1e-3);
    let body = std::fs::read_to_string(&path).unwrap()
        + "chat_template_kwargs: {enable_thinking: false}\n";
    std::fs::write(&path, body).unwrap();
    let error = train::rl(&RunConfig::load(&path).unwrap(), StartOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("chat_template_kwargs (enable_thinking)"),
        "{error:#}"
    );

    std::fs::write(
        dir.path().join("model/chat_template.jinja"),
        THINKING_TEMPLATE,
    )
    .unwrap();
    let (rows, sample) = run("thinking", "");
    assert!(
        sample["chat_prompt"].as_str().unwrap().ends_with("<think>"),
        "{sample}"
    );
    // Completions of 6 tokens from a random model never close the block: no answer,
    // so the has-digit reward is 0 whatever digits they hold.
    assert_eq!(rows[0]["completions/unclosed_reasoning_ratio"], 1.0);
    assert_eq!(rows[0]["completions/answer_length"], 0.0);
    assert_eq!(rows[0]["reward"], 0.0);

    let (rows, sample) = run("direct", "chat_template_kwargs: {enable_thinking: false}\n");
    assert!(
        sample["chat_prompt"]
            .as_str()
            .unwrap()
            .ends_with("<think></think>"),
        "{sample}"
    );
    assert_eq!(rows[0]["completions/unclosed_reasoning_ratio"], 0.0);
    assert_eq!(rows[0]["completions/reasoning_length"], 0.0);
}

/// One GRPO step with activation checkpointing and token-budget micro-batches (of
/// unequal sizes) against the plain path with row micro-batches: the same loss,
/// gradient norm and updated weights, for every loss type whose normalisation does
/// not depend on the micro-batches.
#[test]
fn checkpointing_and_token_budget_micro_batches_take_the_plain_step() {
    let dir = tempfile::tempdir().unwrap();
    for loss_type in ["grpo", "dr_grpo", "dapo"] {
        let rl = format!("beta: 0.04\n  loss_type: {loss_type}");
        let run = |name: &str, train: &str| {
            let path = rl_config(dir.path(), name, &rl, train, 1e-2);
            let config = RunConfig::load(&path).unwrap();
            let model = train::rl(&config, StartOptions::default()).unwrap();
            let row = metrics(&config.run_dir()).remove(0);
            (
                Model::load(&model, tch::Device::Cpu, Dtype::F32).unwrap(),
                row,
            )
        };
        let (plain, plain_row) = run(&format!("plain-{loss_type}"), "max_steps: 1");
        let budget =
            "max_steps: 1\n  gradient_checkpointing: true\n  max_tokens_per_micro_batch: 40";
        let (other, row) = run(&format!("budget-{loss_type}"), budget);
        for key in ["loss", "grad_norm", "kl", "entropy"] {
            let (a, b) = (plain_row[key].as_f64().unwrap(), row[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{loss_type} {key}: {a} vs {b}"
            );
        }
        assert_eq!(plain_row["micro_batches"], 2.0);
        assert!(row["micro_batches"].as_f64().unwrap() > 2.0, "{row}");
        let mut moved = 0.0;
        let other = other.vs.variables();
        for (name, a) in plain.vs.variables() {
            let b = &other[&name];
            let diff = (&a - b).abs().max().double_value(&[]);
            // Adam's first step is lr·g/(|g| + eps): where a gradient is near eps,
            // float noise in g moves the update, so allow 0.1% of the learning rate.
            assert!(diff < 1e-5, "{loss_type}: {name} differs by {diff}");
            moved += a.abs().sum(tch::Kind::Float).double_value(&[]);
        }
        assert!(moved > 0.0);
    }
}
