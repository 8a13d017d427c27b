//! `rlvr demo`: the end-to-end story, offline on a CPU: synthetic arithmetic data, a
//! BPE tokenizer, pretraining a tiny model, SFT, GRPO, and SFT versus RL on held-out
//! items with a report. Each training stage has its config in `configs/demo/` and can
//! be rerun alone; a finished stage is reused unless `--fresh`.

use crate::compare;
use crate::config::{RunConfig, TaskConfig};
use crate::data::arithmetic::{self, ArithmeticParams};
use crate::eval::EvalSettings;
use crate::tokenizer::{Message, Tokenizer};
use crate::train::{self, StartOptions};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DEMO_DIR: &str = "runs/demo";
const TRAIN_ITEMS: usize = 5000;
const HELD_OUT_ITEMS: usize = 500;
const HELD_OUT_TASK: &str = "tasks/arithmetic-held-out.yaml";
const EVAL_SAMPLES: usize = 4;
const VOCAB_SIZE: usize = 400;

pub fn run(fresh: bool) -> Result<()> {
    // The stage configs name paths relative to the folder holding configs/demo/: the
    // current one when it has them (a user's copy), else this repository.
    if !Path::new("configs/demo").is_dir() {
        std::env::set_current_dir(env!("CARGO_MANIFEST_DIR"))?;
    }
    let started = Instant::now();
    let dir = PathBuf::from(DEMO_DIR);
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;

    stage(1, "environment");
    crate::cli::print_env()?;

    stage(2, "shipped configs and tasks");
    check_shipped_configs()?;

    stage(3, "synthetic arithmetic task");
    let (train, held_out) = write_task_data(&dir)?;

    stage(4, "byte-level BPE tokenizer");
    train_tokenizer(&train, &dir.join("tokenizer.json"))?;

    stage(5, "pretraining a tiny Qwen2-shaped model on the corpus");
    run_stage("configs/demo/pretrain.yaml", train::pretrain::run)?;
    stage(
        6,
        "SFT on conversations with the chat template (only 40% of them state the final answer)",
    );
    let sft = run_stage("configs/demo/sft.yaml", train::sft::run)?;
    stage(7, "GRPO against the task's verifiable rewards");
    let rl = run_stage("configs/demo/grpo.yaml", train::grpo::run)?;

    stage(8, "SFT versus RL on the held-out items");
    println!(
        "  {} held-out items, none of them in the training set",
        held_out.len()
    );
    let settings = EvalSettings {
        samples: EVAL_SAMPLES,
        max_new_tokens: 64,
        ..EvalSettings::default()
    };
    let comparison = compare::compare(&[sft, rl], Path::new(HELD_OUT_TASK), &settings)?;
    compare::print_table(&comparison);
    let report = dir.join("report.html");
    compare::report::write(&comparison, &report)?;

    let (base, tuned) = (&comparison.entries[0], &comparison.entries[1]);
    let paired = &comparison.paired[0];
    println!(
        "\nRL {:.1}% vs SFT {:.1}% greedy accuracy on {} held-out items: {:+.1} points \
         (95% paired bootstrap [{:+.1}, {:+.1}]), McNemar exact p = {:.1e}",
        tuned.evaluation.summary.accuracy * 100.0,
        base.evaluation.summary.accuracy * 100.0,
        base.evaluation.summary.items,
        paired.difference * 100.0,
        paired.bootstrap_interval.0 * 100.0,
        paired.bootstrap_interval.1 * 100.0,
        paired.p_value
    );
    println!("report: {}", report.display());
    println!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one training stage from its config, or reuses its final model; a stage that
/// was interrupted continues from its last checkpoint.
fn run_stage(
    config_path: &str,
    run: fn(&RunConfig, StartOptions) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let config = RunConfig::load(Path::new(config_path))?;
    let model = config.run_dir().join("model");
    if model.join("model.safetensors").exists() {
        println!("  reusing {} (pass --fresh to retrain)", model.display());
        return Ok(model);
    }
    let started = Instant::now();
    let options = StartOptions {
        resume: true,
        overwrite: false,
    };
    let model = run(&config, options)?;
    let metrics = crate::run::RunDir::read_metrics(&config.run_dir())?;
    let last = metrics.last().cloned().unwrap_or_default();
    let shown: Vec<String> = ["loss", "reward", "accuracy"]
        .iter()
        .filter_map(|k| {
            let value = last.get(*k)?.as_f64()?;
            Some(format!("{k} {value:.3}"))
        })
        .collect();
    println!(
        "  {} in {:.0} s; last step: {}",
        model.display(),
        started.elapsed().as_secs_f64(),
        shown.join(", ")
    );
    Ok(model)
}

fn stage(number: usize, title: &str) {
    println!("\n[demo {number}] {title}");
}

fn check_shipped_configs() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (folder, is_task) in [("configs", false), ("tasks", true)] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(folder))
            .with_context(|| format!("cannot list {folder}/"))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        for path in paths {
            if is_task {
                TaskConfig::load(&path)?;
            } else {
                RunConfig::load(&path)?;
            }
            println!(
                "  ok  {folder}/{}",
                path.file_name().unwrap_or_default().display()
            );
        }
    }
    Ok(())
}

type Items = Vec<arithmetic::ArithmeticItem>;

/// Train and held-out items (different seeds, and no held-out question that is also a
/// training question), the pretraining corpus and the SFT conversations.
fn write_task_data(dir: &Path) -> Result<(Items, Items)> {
    let params = ArithmeticParams {
        min_digits: 1,
        max_digits: 3,
    };
    let train = arithmetic::generate(params, TRAIN_ITEMS, 1);
    let seen: HashSet<&str> = train.iter().map(|i| i.question.as_str()).collect();
    let held_out: Items = arithmetic::generate(params, HELD_OUT_ITEMS * 2, 2)
        .into_iter()
        .filter(|i| !seen.contains(i.question.as_str()))
        .take(HELD_OUT_ITEMS)
        .collect();
    let json_lines = |items: &Items| -> Result<Vec<String>> {
        Ok(items
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?)
    };
    let corpus = train
        .iter()
        .map(|i| format!("{} {}", i.question, i.solution))
        .collect();
    let conversations = train
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let messages = [
                Message {
                    role: "user".into(),
                    content: i.question.clone(),
                },
                Message {
                    role: "assistant".into(),
                    content: demonstration(n, &i.solution),
                },
            ];
            json!({ "messages": messages }).to_string()
        })
        .collect();
    for (name, lines) in [
        ("train.jsonl", json_lines(&train)?),
        ("held_out.jsonl", json_lines(&held_out)?),
        ("corpus.txt", corpus),
        ("sft.jsonl", conversations),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, lines.join("\n") + "\n")?;
        }
        println!("  {} ({} lines)", path.display(), lines.len());
    }
    println!("  e.g. {} → {}", train[0].question, train[0].solution);
    Ok((train, held_out))
}

/// The SFT demonstrations state the final answer (`#### N`) in only 2 of every 5
/// conversations, as scraped solutions often leave it implicit. SFT copies the habit:
/// greedy decoding then ends after the worked steps with no answer the verifier
/// accepts. GRPO is rewarded only for explicit, correct answers and learns to give them.
fn demonstration(index: usize, solution: &str) -> String {
    if index % 5 < 2 {
        solution.to_string()
    } else {
        solution
            .split(" ####")
            .next()
            .unwrap_or(solution)
            .to_string()
    }
}

fn train_tokenizer(train: &Items, path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        let corpus: Vec<String> = train
            .iter()
            .map(|i| format!("{} {}", i.question, i.solution))
            .collect();
        Tokenizer::train_bpe(corpus.into_iter(), VOCAB_SIZE)?.save(path)?;
    }
    let tokenizer = Tokenizer::load(path)?;
    let example = &train[0].question;
    println!(
        "  {} ({} tokens); {example:?} → {} tokens",
        path.display(),
        tokenizer.vocab_size(),
        tokenizer.encode(example)?.len()
    );
    Ok(tokenizer)
}
