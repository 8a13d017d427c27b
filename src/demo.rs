//! `rlvr demo`: the end-to-end story, offline on a CPU: synthetic task data, a BPE
//! tokenizer, pretraining a tiny model, SFT, GRPO, and SFT versus RL on held-out items
//! with a report. Two tasks tell it: arithmetic (graded by the math verifier) and small
//! Python functions (`--task code`, graded by their tests in the wasm sandbox). Each
//! training stage has its config in `configs/demo[-code]/` and can be rerun alone; a
//! finished stage is reused unless `--fresh`.

use crate::compare;
use crate::config::{RunConfig, TaskConfig};
use crate::data::arithmetic::{self, ArithmeticParams};
use crate::data::functions::{self, FunctionParams};
use crate::eval::EvalSettings;
use crate::tokenizer::{Message, Tokenizer};
use crate::train::{self, StartOptions};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

const HELD_OUT_ITEMS: usize = 500;
const EVAL_SAMPLES: usize = 4;
const VOCAB_SIZE: usize = 400;

/// Which story the demo tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoTask {
    /// Multi-digit addition with worked steps, graded by the math verifier.
    Arithmetic,
    /// One-line Python functions, graded by their asserts in the wasm sandbox.
    Code,
}

/// A task item as the demo writes it: the record, and the text it trains on.
struct Item {
    record: Value,
    question: String,
    solution: String,
}

struct Story {
    dir: &'static str,
    configs: &'static str,
    held_out_task: &'static str,
    /// How the SFT demonstrations fall short of what the verifier pays for.
    flaw: &'static str,
}

impl DemoTask {
    fn story(self) -> Story {
        match self {
            Self::Arithmetic => Story {
                dir: "runs/demo",
                configs: "configs/demo",
                held_out_task: "tasks/arithmetic-held-out.yaml",
                flaw: "only 40% of them state the final answer",
            },
            Self::Code => Story {
                dir: "runs/demo-code",
                configs: "configs/demo-code",
                held_out_task: "tasks/python-functions-held-out.yaml",
                flaw: "60% of them forget the `return`",
            },
        }
    }

    /// Training items (the same as the RL task's generator gives) and held-out items
    /// whose questions never occur in training.
    fn items(self) -> Result<(Vec<Item>, Vec<Item>)> {
        let (train, candidates) = match self {
            Self::Arithmetic => {
                let params = ArithmeticParams {
                    min_digits: 1,
                    max_digits: 3,
                };
                let text =
                    |i: &arithmetic::ArithmeticItem| (i.question.clone(), i.solution.clone());
                (
                    to_items(arithmetic::generate(params, 5000, 1), text)?,
                    to_items(arithmetic::generate(params, HELD_OUT_ITEMS * 2, 2), text)?,
                )
            }
            Self::Code => {
                let params = FunctionParams { max_constant: 999 };
                let text = |i: &functions::FunctionItem| (i.question.clone(), i.solution.clone());
                (
                    to_items(functions::generate(params, 2000, 11), text)?,
                    to_items(functions::generate(params, HELD_OUT_ITEMS * 2, 12), text)?,
                )
            }
        };
        let seen: HashSet<&str> = train.iter().map(|i| i.question.as_str()).collect();
        let mut unique = HashSet::new();
        let held_out: Vec<Item> = candidates
            .into_iter()
            .filter(|i| !seen.contains(i.question.as_str()) && unique.insert(i.question.clone()))
            .take(HELD_OUT_ITEMS)
            .collect();
        Ok((train, held_out))
    }

    /// The SFT demonstration for training item `index`: deliberately short of what the
    /// verifier pays for in a share of cases, as scraped demonstrations often are. SFT
    /// copies the habit; GRPO is paid only for what passes the verifier and drops it.
    fn demonstration(self, index: usize, solution: &str) -> String {
        match self {
            // The final answer (`#### N`) in 2 of every 5.
            Self::Arithmetic if index % 5 >= 2 => solution
                .split(" ####")
                .next()
                .unwrap_or(solution)
                .to_string(),
            // The `return` kept in 2 of every 5: without it the function returns None.
            Self::Code if index % 5 >= 2 => solution.replace("return ", ""),
            _ => solution.to_string(),
        }
    }
}

/// Generator items as demo items; `text` gives (question, solution).
fn to_items<T: serde::Serialize>(
    items: Vec<T>,
    text: impl Fn(&T) -> (String, String),
) -> Result<Vec<Item>> {
    items
        .into_iter()
        .map(|item| {
            let (question, solution) = text(&item);
            Ok(Item {
                record: serde_json::to_value(&item)?,
                question,
                solution,
            })
        })
        .collect()
}

/// Runs the demo from `root`, the folder that holds `configs/` and `tasks/` (a checkout
/// of rlvr, or a copy of those folders); its runs go to `root/runs/`.
pub fn run(root: &Path, fresh: bool, task: DemoTask) -> Result<()> {
    let story = task.story();
    if !root.join(story.configs).is_dir() {
        bail!(
            "{}: no {}/ here; run the demo from the rlvr folder or pass --root DIR",
            root.display(),
            story.configs
        );
    }
    // The stage configs name their paths relative to the folder that holds them.
    std::env::set_current_dir(root).with_context(|| format!("cannot enter {}", root.display()))?;
    let started = Instant::now();
    let dir = PathBuf::from(story.dir);
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;

    stage(1, "environment");
    crate::env_report::print()?;

    stage(2, "shipped configs and tasks");
    check_shipped_configs()?;

    stage(3, "synthetic task data");
    let (train, held_out) = task.items()?;
    write_data(task, &dir, &train, &held_out)?;

    stage(4, "byte-level BPE tokenizer");
    train_tokenizer(&train, &dir.join("tokenizer.json"))?;

    let config = |stage: &str| format!("{}/{stage}.yaml", story.configs);
    stage(5, "pretraining a tiny Qwen2-shaped model on the corpus");
    run_stage(&config("pretrain"), train::pretrain::run)?;
    stage(
        6,
        &format!(
            "SFT on conversations with the chat template ({})",
            story.flaw
        ),
    );
    let sft = run_stage(&config("sft"), train::sft::run)?;
    stage(7, "GRPO against the task's verifiable rewards");
    let rl = run_stage(&config("grpo"), train::rl)?;

    stage(8, "SFT versus RL on the held-out items");
    println!(
        "  {} held-out items, none of them a training question",
        held_out.len()
    );
    let settings = EvalSettings {
        samples: EVAL_SAMPLES,
        max_new_tokens: 64,
        ..EvalSettings::default()
    };
    let comparison = compare::compare(&[sft, rl], Path::new(story.held_out_task), &settings)?;
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
    // A stage whose config changed since it was interrupted is refused (the
    // error says so); `--fresh` starts it again.
    let options = StartOptions {
        resume: true,
        ..StartOptions::default()
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

/// Every config and task under the current folder (the demo's root) loads.
fn check_shipped_configs() -> Result<()> {
    let root = Path::new(".");
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

/// train.jsonl and held_out.jsonl (task records), corpus.jsonl (pretraining text) and
/// sft.jsonl (conversations); files already there are kept.
fn write_data(task: DemoTask, dir: &Path, train: &[Item], held_out: &[Item]) -> Result<()> {
    let records =
        |items: &[Item]| -> Vec<String> { items.iter().map(|i| i.record.to_string()).collect() };
    let corpus = train
        .iter()
        .map(|i| json!({ "text": format!("{} {}", i.question, i.solution) }).to_string())
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
                    content: task.demonstration(n, &i.solution),
                },
            ];
            json!({ "messages": messages }).to_string()
        })
        .collect();
    for (name, lines) in [
        ("train.jsonl", records(train)),
        ("held_out.jsonl", records(held_out)),
        ("corpus.jsonl", corpus),
        ("sft.jsonl", conversations),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, lines.join("\n") + "\n")?;
        }
        println!("  {} ({} lines)", path.display(), lines.len());
    }
    println!("  e.g. {:?} → {:?}", train[0].question, train[0].solution);
    Ok(())
}

fn train_tokenizer(train: &[Item], path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        let corpus = train
            .iter()
            .map(|i| format!("{} {}", i.question, i.solution))
            .collect::<Vec<_>>();
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
