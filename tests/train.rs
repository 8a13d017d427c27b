//! Training end to end on tiny models: GRPO raises a reward, pretraining and SFT lower
//! their loss, a killed run resumes to the same metrics as one that never stopped, and
//! bad input stops a run with a message that says where.

use rlvr::config::RunConfig;
use rlvr::config::run::Dtype;
use rlvr::model::{Model, ModelConfig};
use rlvr::run::RunDir;
use rlvr::tokenizer::Tokenizer;
use rlvr::train::{self, StartOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tokenizer and a random tiny Qwen2 in `dir/model`.
fn tiny_model(dir: &Path) -> PathBuf {
    let corpus = (0..300).map(|i| format!("What is {i} + {}? #### {}", i * 3, i * 4));
    let tokenizer = Tokenizer::train_bpe(corpus, 300).unwrap();
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path).unwrap();
    tch::manual_seed(0);
    let config = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 32, 1, 4);
    let model = Model::random(&config, tch::Device::Cpu, Dtype::F32).unwrap();
    let model_dir = dir.join("model");
    model.save(&model_dir, Some(&tokenizer_path)).unwrap();
    model_dir
}

/// A task whose reward is 1 when the completion holds a digit: reachable by a random
/// model some of the time, so GRPO has a signal to amplify.
fn digit_task(dir: &Path) -> PathBuf {
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

fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, body).unwrap();
    path
}

fn rl_config(dir: &Path, output: &str, extra_rl: &str, train: &str) -> PathBuf {
    rl_config_with_lr(dir, output, extra_rl, train, 3e-3)
}

fn rl_config_with_lr(dir: &Path, output: &str, extra_rl: &str, train: &str, lr: f64) -> PathBuf {
    let model = tiny_model(dir);
    let task = digit_task(dir);
    let body = format!(
        r#"name: rl
output_dir: {output}
seed: 7
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
rl:
  prompts_per_step: 4
  num_generations: 8
  max_completion_length: 6
  {extra_rl}
"#,
        output = dir.join(output).display(),
        model = model.display(),
        task = task.display(),
    );
    write_config(dir, output, &body)
}

fn metrics(run_dir: &Path) -> Vec<Value> {
    RunDir::read_metrics(run_dir).unwrap()
}

fn mean(rows: &[Value], key: &str) -> f64 {
    rows.iter().map(|m| m[key].as_f64().unwrap()).sum::<f64>() / rows.len() as f64
}

#[test]
fn grpo_raises_the_reward_of_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = rl_config_with_lr(dir.path(), "out", "beta: 0.0", "max_steps: 24", 2e-2);
    let config = RunConfig::load(&path).unwrap();
    let final_model = train::grpo::run(&config, StartOptions::default()).unwrap();
    assert!(final_model.join("model.safetensors").exists());
    let rows = metrics(&config.run_dir());
    assert_eq!(rows.len(), 24);
    let (first, last) = (mean(&rows[..6], "reward"), mean(&rows[18..], "reward"));
    eprintln!("mean reward: first 6 steps {first:.3}, last 6 steps {last:.3}");
    assert!(
        last > first + 0.2,
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
    let samples = std::fs::read_to_string(config.run_dir().join("samples.jsonl")).unwrap();
    let first: Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    for key in ["prompt", "completion", "reward", "advantage", "rewards"] {
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

/// Everything but wall times.
fn comparable(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .map(|mut row| {
            let object = row.as_object_mut().unwrap();
            object.retain(|key, _| !key.starts_with("time/"));
            row
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let rl = "beta: 0.04\n  num_iterations: 2\n  loss_type: grpo";
    let train = "max_steps: 8\n  save_steps: 2";
    let whole = rl_config(dir.path(), "whole", rl, train);
    assert!(run_cli(&whole, &[], None));
    let expected = comparable(metrics(&dir.path().join("whole/rl")));
    assert_eq!(expected.len(), 8);

    let killed = rl_config(dir.path(), "killed", rl, train);
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
}

#[test]
fn pretraining_then_sft_lower_their_losses() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..200)
        .map(|i| format!("What is {i} + 1? {}", i + 1))
        .collect();
    std::fs::write(dir.path().join("corpus.txt"), lines.join("\n")).unwrap();
    let pretrain = write_config(
        dir.path(),
        "pretrain",
        &format!(
            r#"name: pre
output_dir: {out}
model:
  init: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4}}
  tokenizer: {out}/tokenizer.json
data:
  path: {out}/corpus.txt
  max_length: 32
  tokenizer_vocab_size: 300
optim:
  learning_rate: 3.0e-3
train:
  max_steps: 30
  batch_size: 8
  gradient_accumulation_steps: 2
"#,
            out = dir.path().display()
        ),
    );
    let config = RunConfig::load(&pretrain).unwrap();
    let model = train::pretrain::run(&config, StartOptions::default()).unwrap();
    assert!(dir.path().join("tokenizer.json").exists(), "trained first");
    let rows = metrics(&config.run_dir());
    assert!(mean(&rows[25..], "loss") < mean(&rows[..5], "loss") - 1.0);

    let conversations: Vec<String> = (0..50)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is {i} + 1?")},
                {"role": "assistant", "content": format!("{}", i + 1)},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("sft.jsonl"), conversations.join("\n")).unwrap();
    let sft = write_config(
        dir.path(),
        "sft",
        &format!(
            r#"name: sft
output_dir: {out}
model:
  path: {model}
data:
  path: {out}/sft.jsonl
optim:
  learning_rate: 3.0e-3
train:
  max_steps: 20
  batch_size: 8
"#,
            out = dir.path().display(),
            model = model.display()
        ),
    );
    let config = RunConfig::load(&sft).unwrap();
    train::sft::run(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    assert!(mean(&rows[15..], "loss") < mean(&rows[..3], "loss"));
    // Only the assistant's answer and end token count: 2–4 tokens per conversation.
    let tokens = rows[0]["tokens"].as_f64().unwrap();
    assert!((16.0..=32.0).contains(&tokens), "{tokens} target tokens");
}

#[test]
fn a_bad_sft_row_is_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}"#;
    std::fs::write(
        dir.path().join("sft.jsonl"),
        format!("{good}\n{{\"text\": \"no messages\"}}\n{good}\n"),
    )
    .unwrap();
    let body = |on_bad: &str| {
        format!(
            "name: sft\noutput_dir: {out}\nmodel: {{path: {model}}}\ndata: {{path: {out}/sft.jsonl}}\n\
             train: {{max_steps: 1, batch_size: 2, on_bad_record: {on_bad}}}\n",
            out = dir.path().display(),
            model = model.display()
        )
    };
    let config = RunConfig::load(&write_config(dir.path(), "a", &body("error"))).unwrap();
    let error = train::sft::run(&config, StartOptions::default()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("sft.jsonl record 2") && message.contains("messages"),
        "{message}"
    );
    let config = RunConfig::load(&write_config(dir.path(), "b", &body("skip"))).unwrap();
    train::sft::run(&config, StartOptions::default()).unwrap();
}

#[test]
fn a_task_row_without_its_answer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rows.jsonl"),
        "{\"question\": \"1+1\", \"answer\": \"2\"}\n{\"question\": \"2+2\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("task.yaml"),
        "name: t\nsource: {path: rows.jsonl}\nprompt: \"{question}\"\nanswer_field: answer\n\
         rewards: [{kind: math}]\n",
    )
    .unwrap();
    let model = tiny_model(dir.path());
    let body = format!(
        "name: r\noutput_dir: {out}\nmodel: {{path: {model}}}\ntask: {out}/task.yaml\n\
         train: {{max_steps: 1}}\nrl: {{prompts_per_step: 1, num_generations: 2, max_completion_length: 4}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "r", &body)).unwrap();
    let error = train::grpo::run(&config, StartOptions::default()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("task.yaml record 2: no answer field `answer`"),
        "{message}"
    );
}

#[test]
fn configs_that_do_not_fit_the_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // A tokenizer with more tokens than the model's vocabulary.
    let words = (0..3000u32).map(|i| {
        let letters =
            |n: u32| (0..4).map(move |k| char::from(b'a' + (n / 26u32.pow(k) % 26) as u8));
        letters(i.wrapping_mul(7919))
            .chain(letters(i))
            .collect::<String>()
    });
    let big = Tokenizer::train_bpe(words, 600).unwrap();
    assert!(big.vocab_size() > 400);
    big.save(&dir.path().join("big.json")).unwrap();
    let body = format!(
        "name: v\noutput_dir: {out}\nmodel: {{path: {model}, tokenizer: {out}/big.json}}\n\
         data: {{path: {out}/none.jsonl}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "v", &body)).unwrap();
    let message = format!(
        "{:#}",
        train::sft::run(&config, StartOptions::default()).unwrap_err()
    );
    assert!(
        message.contains("big.json") && message.contains("vocab_size"),
        "{message}"
    );

    let task = digit_task(dir.path());
    let body = format!(
        "name: k\noutput_dir: {out}\nmodel: {{path: {model}, reference: {out}/missing}}\ntask: {task}\n\
         rl: {{beta: 0.1, num_generations: 2}}\n",
        out = dir.path().display(),
        model = model.display(),
        task = task.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "k", &body)).unwrap();
    let message = format!(
        "{:#}",
        train::grpo::run(&config, StartOptions::default()).unwrap_err()
    );
    assert!(message.contains("model.reference"), "{message}");
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..100)
        .map(|i| format!("{i} plus one is {}", i + 1))
        .collect();
    std::fs::write(dir.path().join("corpus.txt"), lines.join("\n")).unwrap();
    let model = tiny_model(dir.path());
    let body = format!(
        "name: nan\noutput_dir: {out}\nmodel: {{path: {model}}}\ndata: {{path: {out}/corpus.txt, max_length: 16}}\n\
         optim: {{learning_rate: 1.0e+30, max_grad_norm: 0, lr_scheduler: constant}}\n\
         train: {{max_steps: 20, batch_size: 4, save_steps: 1}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "nan", &body)).unwrap();
    let message = format!(
        "{:#}",
        train::pretrain::run(&config, StartOptions::default()).unwrap_err()
    );
    assert!(message.contains("stopping before the update"), "{message}");
    let run = RunDir {
        dir: config.run_dir(),
    };
    let (step, last) = run
        .latest_checkpoint()
        .unwrap()
        .expect("a checkpoint was kept");
    assert!(message.contains(&last.display().to_string()), "{message}");
    assert!(step < 20);
    Model::load(&last, tch::Device::Cpu, Dtype::F32).expect("the kept checkpoint loads");
}

#[test]
fn training_logprobs_equal_the_samplers() {
    use rlvr::sample::{SamplingParams, generate};
    use rlvr::train::batch::completion_logprobs;
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&tiny_model(dir.path()), tch::Device::Cpu, Dtype::F32).unwrap();
    let prompts: Vec<Vec<i64>> = vec![vec![5, 9, 12], vec![7], vec![3, 4, 5, 6, 8]];
    let params = SamplingParams {
        max_new_tokens: 7,
        temperature: 0.7,
        stop_token_ids: vec![10, 11, 12],
        seed: 3,
        ..SamplingParams::default()
    };
    let completions = generate(&model.transformer, &prompts, &params, None).unwrap();
    let p: Vec<&[i64]> = prompts.iter().map(Vec::as_slice).collect();
    let c: Vec<&[i64]> = completions.iter().map(|c| c.token_ids.as_slice()).collect();
    let (logprobs, _) =
        tch::no_grad(|| completion_logprobs(&model.transformer, &p, &c, 0.7)).unwrap();
    for (row, completion) in completions.iter().enumerate() {
        for (t, &expected) in completion.logprobs.iter().enumerate() {
            let got = logprobs.double_value(&[row as i64, t as i64]);
            assert!(
                (got - expected as f64).abs() < 1e-4,
                "row {row} token {t}: forward {got} vs sampler {expected}"
            );
        }
    }
}

#[test]
fn a_reward_model_learns_synthetic_preferences_and_scores_a_task() {
    let dir = tempfile::tempdir().unwrap();
    // The RLHF example's synthetic preference pairs (scripts/make_cheerful_data.py).
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/data/cheerful/pairs.jsonl");
    let pairs: Vec<Value> = rlvr::data::read_jsonl(&shipped)
        .unwrap()
        .into_iter()
        .take(400)
        .collect();
    let text = |p: &Value, key: &str| p[key].as_str().unwrap().to_string();
    // A base model whose tokenizer knows the words (as a pretrained one would).
    let texts = pairs
        .iter()
        .flat_map(|p| [text(p, "prompt"), text(p, "chosen"), text(p, "rejected")]);
    let tokenizer = Tokenizer::train_bpe(texts, 400).unwrap();
    tokenizer.save(&dir.path().join("tokenizer.json")).unwrap();
    tch::manual_seed(0);
    let base = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 32, 1, 4);
    let model = dir.path().join("base");
    Model::random(&base, tch::Device::Cpu, Dtype::F32)
        .unwrap()
        .save(&model, Some(&dir.path().join("tokenizer.json")))
        .unwrap();
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    std::fs::write(dir.path().join("pairs.jsonl"), lines.join("\n")).unwrap();
    let body = format!(
        "name: rm\noutput_dir: {out}\nmodel: {{path: {model}}}\ndata: {{path: {out}/pairs.jsonl, max_length: 64}}\n\
         optim: {{learning_rate: 5.0e-3, lr_scheduler: constant}}\ntrain: {{max_steps: 30, batch_size: 16}}\n\
         rm: {{eval_fraction: 0.25, eval_steps: 10, center_rewards_coefficient: 0.01}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "rm", &body)).unwrap();
    let rm = train::reward_model::run(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    let eval = rows.last().unwrap()["eval_accuracy"].as_f64().unwrap();
    let evals: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get("eval_accuracy")?.as_f64())
        .collect();
    eprintln!("held-out pair accuracy every 10 steps: {evals:?}");
    assert!(eval >= 0.9, "held-out pair accuracy {eval}");
    assert!(rows[0].get("rewards/margin").is_some());
    let config_json = std::fs::read_to_string(rm.join("config.json")).unwrap();
    assert!(
        config_json.contains("ForSequenceClassification"),
        "{config_json}"
    );

    // The trained model is a reward function of a task: upbeat text scores higher.
    std::fs::write(
        dir.path().join("task.yaml"),
        format!(
            "name: t\nsource: {{generator: arithmetic, num_examples: 2}}\nprompt: \"Write a sentence about {{question}}.\"\n\
             rewards: [{{kind: reward_model, model: {}}}]\n",
            rm.display()
        ),
    )
    .unwrap();
    let task = rlvr::config::TaskConfig::load(&dir.path().join("task.yaml")).unwrap();
    let rewards = rlvr::reward::RewardSet::from_task(&task, dir.path()).unwrap();
    let record = serde_json::json!({});
    let sample = |completion| rlvr::reward::Sample {
        record: &record,
        prompt: "Write a sentence about the sea.",
        completion,
        completion_tokens: 0,
    };
    let scored = rewards.score_batch(&[
        sample("the sea is bright and lovely."),
        sample("the sea is bleak and gloomy."),
    ]);
    assert!(scored[0].total > scored[1].total, "{scored:?}");
    assert!(scored[0].per_function[0].infra_error.is_none());

    // RL against the reward model, watched by a gold reward that is not trained on:
    // the run logs both and the monitor's flag; the gold score stays out of the total.
    std::fs::write(
        dir.path().join("rlhf.yaml"),
        format!(
            "name: rlhf\nsource: {{generator: arithmetic, num_examples: 8}}\nprompt: \"Write a sentence about {{question}}.\"\n\
             rewards:\n  - {{kind: reward_model, name: rm, model: {}}}\n  - {{kind: regex, name: short, pattern: '.{{0,12}}', gold: true}}\n",
            rm.display()
        ),
    )
    .unwrap();
    let body = format!(
        "name: rlhf\noutput_dir: {out}\nmodel: {{path: {model}}}\ntask: {out}/rlhf.yaml\n\
         optim: {{learning_rate: 2.0e-2, lr_scheduler: constant}}\ntrain: {{max_steps: 64, batch_size: 16}}\n\
         rl: {{algorithm: ppo, prompts_per_step: 4, num_generations: 4, max_completion_length: 8, \
         ppo: {{num_ppo_epochs: 2, num_mini_batches: 2}}}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "rlhf-run", &body)).unwrap();
    train::grpo::run(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    let (first, last) = (mean(&rows[..4], "reward"), mean(&rows[56..], "reward"));
    eprintln!("PPO against the reward model: reward {first:.3} → {last:.3}");
    assert!(
        last > first + 0.5,
        "the reward model's score went from {first:.3} to {last:.3}"
    );
    for row in rows {
        let (proxy, gold) = (
            row["overoptimization/proxy"].as_f64().unwrap(),
            row["overoptimization/gold"].as_f64().unwrap(),
        );
        let flag = row["overoptimization/flag"].as_f64().unwrap();
        assert!(flag == 0.0 || flag == 1.0);
        assert!(
            (row["reward"].as_f64().unwrap() - proxy).abs() < 1e-9,
            "gold is not trained on: {row}"
        );
        assert_eq!(row["rewards/short/mean"].as_f64(), Some(gold));
    }
}

#[test]
fn ppo_with_a_value_head_raises_the_reward_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rl = "algorithm: ppo\n  ppo: {num_ppo_epochs: 2, num_mini_batches: 2, kl_coef: 0.01, kl_target: 0.5}";
    let path = rl_config_with_lr(
        dir.path(),
        "ppo",
        rl,
        "max_steps: 40\n  save_steps: 20",
        2e-2,
    );
    let config = RunConfig::load(&path).unwrap();
    let model = train::grpo::run(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    let (first, last) = (mean(&rows[..8], "reward"), mean(&rows[32..], "reward"));
    eprintln!("PPO mean reward: first 8 steps {first:.3}, last 8 steps {last:.3}");
    assert!(
        last > first + 0.2,
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
    train::grpo::run(
        &config,
        StartOptions {
            resume: true,
            overwrite: false,
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
    let path = rl_config_with_lr(dir.path(), "critic", rl, "max_steps: 8", 2e-2);
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
    let model = train::grpo::run(&config, StartOptions::default()).unwrap();
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
