//! `rlvr demo`: the end-to-end story, from nothing to an RL-improved tiny model and a
//! comparison report, offline. Stages land one by one; until all exist the demo runs
//! the ones that do and says plainly which are still missing. A finished stage is
//! reused unless `--fresh`.

use crate::config::run::Dtype;
use crate::config::{RunConfig, TaskConfig};
use crate::data::arithmetic::{self, ArithmeticParams};
use crate::model::{Model, ModelConfig};
use crate::reward::{RewardSet, Sample};
use crate::sample::{self, SamplingParams};
use crate::tokenizer::{self, Message, Tokenizer};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::Device;

const DEMO_DIR: &str = "runs/demo";
const TRAIN_ITEMS: usize = 5000;
const HELD_OUT_ITEMS: usize = 500;
const VOCAB_SIZE: usize = 400;

/// Stages of the full demo that are not built yet, in data-flow order.
const MISSING_STAGES: &[&str] = &[
    "pretrain the tiny model on the task corpus",
    "SFT with the chat template",
    "GRPO against the verifiable rewards",
    "compare SFT and RL on the held-out items and write runs/demo/report.html",
];

pub fn run(fresh: bool) -> Result<()> {
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
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = train_tokenizer(&train, &tokenizer_path)?;

    stage(
        5,
        "tiny Qwen2-shaped model (random init, Hugging Face layout)",
    );
    let model_dir = dir.join("init");
    if !model_dir.join("model.safetensors").exists() {
        tch::manual_seed(0);
        let config = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 64, 2, 4);
        Model::random(&config, Device::Cpu, Dtype::F32)?.save(&model_dir, Some(&tokenizer_path))?;
    }
    let model = Model::load(&model_dir, Device::Cpu, Dtype::F32)?;
    let parameters = model.parameter_count();
    println!("  {} ({parameters} parameters)", model_dir.display());

    stage(6, "sampling from the untrained model");
    let question = &held_out[0].question;
    let message = Message {
        role: "user".into(),
        content: question.clone(),
    };
    let prompt = tokenizer.render_chat(&[message], true)?.ids;
    let params = SamplingParams {
        max_new_tokens: 24,
        stop_token_ids: tokenizer.token_id(tokenizer::END).into_iter().collect(),
        seed: 0,
        ..SamplingParams::default()
    };
    let completions = sample::generate(&model.transformer, &vec![prompt; 4], &params, None)?;
    println!(
        "  prompt: {question}  (expected answer {})",
        held_out[0].answer
    );
    for completion in &completions {
        let text = tokenizer.decode(&completion.token_ids, false)?;
        println!("  → {text:?} ({:?})", completion.finish_reason);
    }

    stage(7, "scoring with the task's verifiable rewards");
    score_untrained(&model, &tokenizer, &held_out[..64], &params)?;

    println!("\nNot built yet (the demo grows as these land):");
    for stage in MISSING_STAGES {
        println!("  - {stage}");
    }
    Ok(())
}

/// One completion per held-out prompt, scored by tasks/arithmetic.yaml's rewards; an
/// untrained model scores ~0, which is what training has to move.
fn score_untrained(
    model: &Model,
    tokenizer: &Tokenizer,
    items: &[arithmetic::ArithmeticItem],
    params: &SamplingParams,
) -> Result<()> {
    let task_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/arithmetic.yaml");
    let task = TaskConfig::load(&task_path)?;
    let rewards = RewardSet::from_task(&task, task_path.parent().unwrap_or(Path::new(".")))?;
    let prompts: Vec<Vec<i64>> = items
        .iter()
        .map(|item| {
            let message = Message {
                role: "user".into(),
                content: item.question.clone(),
            };
            tokenizer.render_chat(&[message], true).map(|chat| chat.ids)
        })
        .collect::<Result<_>>()?;
    let completions = sample::generate(&model.transformer, &prompts, params, None)?;
    let texts: Vec<String> = completions
        .iter()
        .map(|c| tokenizer.decode(&c.token_ids, true))
        .collect::<Result<_>>()?;
    let records: Vec<serde_json::Value> = items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let samples: Vec<Sample> = records
        .iter()
        .zip(items)
        .zip(&texts)
        .zip(&completions)
        .map(|(((record, item), text), completion)| Sample {
            record,
            prompt: &item.question,
            completion: text,
            completion_tokens: completion.token_ids.len(),
        })
        .collect();
    let scored = rewards.score_batch(&samples);
    for (f, name) in rewards.names().iter().enumerate() {
        let mean = scored.iter().map(|s| s.per_function[f].value).sum::<f64>()
            / scored.len().max(1) as f64;
        println!(
            "  {name}: mean {mean:.3} over {} held-out prompts",
            scored.len()
        );
    }
    Ok(())
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

/// Train and held-out items from disjoint seeds, saved as jsonl.
fn write_task_data(dir: &Path) -> Result<(Items, Items)> {
    let params = ArithmeticParams {
        min_digits: 1,
        max_digits: 3,
    };
    let train = arithmetic::generate(params, TRAIN_ITEMS, 1);
    let held_out = arithmetic::generate(params, HELD_OUT_ITEMS, 2);
    for (name, items) in [("train.jsonl", &train), ("held_out.jsonl", &held_out)] {
        let path = dir.join(name);
        if !path.exists() {
            let lines: Vec<String> = items
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?;
            std::fs::write(&path, lines.join("\n") + "\n")?;
        }
        println!("  {} ({} items)", path.display(), items.len());
    }
    println!("  e.g. {} → {}", train[0].question, train[0].solution);
    Ok((train, held_out))
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
