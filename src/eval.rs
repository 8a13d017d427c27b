//! `rlvr eval`: how good a checkpoint is on a task.
//!
//! Greedy accuracy (the task's first reward at 1), unbiased pass@k from n samples per
//! item (Chen et al., 2021: 1 − C(n−c, k)/C(n, k)), maj@k (the most frequent final
//! answer among k samples), the mean of each reward function and the mean completion
//! length. Items and sampling seeds depend only on the task and the settings, so every
//! checkpoint sees the same ones; per-item results are saved as jsonl beside a summary,
//! and a later run reuses them only when the settings, the task file, its records, its
//! reward scripts, the model's files and the rlvr build are all the same.
//!
//! A completion the grader failed on is not a wrong answer: when any could not be
//! graded, the per-item results are saved and no accuracy is reported.

use crate::config::TaskConfig;
use crate::config::run::OnBadRecord;
use crate::data::order::step_seed;
use crate::data::prompts::{Prompt, load_prompts};
use crate::model::Model;
use crate::reward::math::{MathOptions, extract_answer};
use crate::reward::{RewardSet, Sample, Scored};
use crate::sample::{self, Completion, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::types::Dtype;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Only the first N items (all when None).
    pub limit: Option<usize>,
    /// Samples per item for pass@k and maj@k (0: greedy only).
    pub samples: usize,
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Extra variables for the model's chat template (`enable_thinking`, …).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            limit: None,
            samples: 8,
            temperature: 1.0,
            max_new_tokens: 128,
            seed: 0,
            chat_template_kwargs: serde_json::Map::new(),
        }
    }
}

/// One item's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    pub index: usize,
    pub prompt: String,
    /// The record's `category` field, when it has one (for per-category accuracy).
    pub category: Option<String>,
    pub greedy_completion: String,
    pub greedy_correct: bool,
    /// Each reward function's score of the greedy completion (those that graded it).
    pub greedy_rewards: BTreeMap<String, f64>,
    /// Why the grader failed on the greedy completion, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greedy_ungraded: Option<String>,
    /// Samples the grader failed on, and the first reason.
    #[serde(default)]
    pub samples_ungraded: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ungraded_reason: Option<String>,
    pub greedy_tokens: usize,
    /// Of the `samples` completions, how many were correct.
    pub samples_correct: usize,
    /// Correctness and final answer of each sample, in order (for maj@k).
    pub sample_correct: Vec<bool>,
    pub sample_answers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalSummary {
    pub model: PathBuf,
    pub task: String,
    pub items: usize,
    pub settings: EvalSettings,
    /// What the results depend on besides the settings (see [`inputs_key`]).
    pub inputs_key: String,
    pub accuracy: f64,
    pub pass_at_k: BTreeMap<usize, f64>,
    pub maj_at_k: BTreeMap<usize, f64>,
    pub mean_rewards: BTreeMap<String, f64>,
    pub mean_length: f64,
    pub seconds: f64,
}

pub struct Evaluation {
    pub summary: EvalSummary,
    pub items: Vec<ItemResult>,
    /// Whether the results were computed now or read back from an earlier run.
    pub reused: bool,
}

/// The unbiased pass@k estimate for one item with `correct` of `n` samples right.
pub fn pass_at_k(n: usize, correct: usize, k: usize) -> f64 {
    if k > n || n == 0 {
        return f64::NAN;
    }
    if n - correct < k {
        return 1.0;
    }
    // 1 − Π_{i=n−c+1}^{n} (1 − k/i), the numerically stable product form.
    1.0 - (n - correct + 1..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// The k values reported for n samples: 1, 2, 4, … up to n.
pub fn ks(n: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |k| Some(k * 2))
        .take_while(|&k| k <= n)
        .collect()
}

/// Where the results of `model` on `task` are kept.
pub fn results_dir(model: &Path, task_name: &str) -> PathBuf {
    model.join("eval").join(task_name)
}

/// Evaluates `model` on `task`, reusing saved results made with the same settings.
pub fn evaluate(model_dir: &Path, task_path: &Path, settings: &EvalSettings) -> Result<Evaluation> {
    let task = TaskConfig::load(task_path)?;
    let out = results_dir(model_dir, &task.name);
    let key = inputs_key(model_dir, &task, task_path)?;
    match load_saved(&out, settings, &key)? {
        Saved::Usable(saved) => return Ok(*saved),
        Saved::Stale(why) => eprintln!(
            "eval: recomputing {} ({why})",
            out.join("summary.json").display()
        ),
        Saved::None => {}
    }
    let started = std::time::Instant::now();
    let tokenizer_path = model_dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::load(&tokenizer_path)?;
    tokenizer
        .set_template_kwargs(settings.chat_template_kwargs.clone())
        .with_context(|| tokenizer_path.display().to_string())?;
    let model = Model::load(model_dir, tch::Device::Cpu, Dtype::F32)?;
    let mut prompts = load_prompts(&task, task_path, &tokenizer, OnBadRecord::Error)?;
    if let Some(limit) = settings.limit {
        prompts.truncate(limit);
    }
    if prompts.is_empty() {
        bail!("{}: no items to evaluate", task_path.display());
    }
    let task_dir = task_path.parent().unwrap_or(Path::new("."));
    let rewards = RewardSet::from_task(&task, task_dir)?;
    let names: Vec<String> = rewards.names().iter().map(|s| s.to_string()).collect();
    let stop = sample::stop_token_ids(model.config(), &tokenizer);
    let params = |temperature: f64, seed: u64| SamplingParams {
        max_new_tokens: settings.max_new_tokens,
        temperature,
        stop_token_ids: stop.clone(),
        seed,
        ..SamplingParams::default()
    };

    let run = |rows: &[usize], temperature: f64, stream: u64| {
        run_rows(&model, &tokenizer, &rewards, &prompts, rows, |chunk| {
            params(temperature, step_seed(settings.seed, chunk, stream))
        })
    };
    let greedy = run(&(0..prompts.len()).collect::<Vec<_>>(), 0.0, 0)?;
    let sample_rows: Vec<usize> = (0..prompts.len())
        .flat_map(|i| std::iter::repeat_n(i, settings.samples))
        .collect();
    let sampled = run(&sample_rows, settings.temperature, 1)?;

    let items: Vec<ItemResult> = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let samples = &sampled[i * settings.samples..(i + 1) * settings.samples];
            item_result(i, prompt, &greedy[i], samples, &names)
        })
        .collect();
    save_items(&out, &items)?;
    refuse_ungraded(&items, &out)?;
    let summary = summarize(
        (model_dir, &task.name, &key),
        settings,
        &items,
        &names,
        started.elapsed().as_secs_f64(),
    );
    save_summary(&out, &summary)?;
    Ok(Evaluation {
        summary,
        items,
        reused: false,
    })
}

/// The first grader failure among a completion's rewards: eval reports every reward,
/// so any failure leaves the completion ungraded.
fn failure(scored: &Scored) -> Option<String> {
    scored
        .per_function
        .iter()
        .find_map(|s| s.infra_error.clone())
}

/// An accuracy over completions the grader failed on would count its failures as wrong
/// answers: refuse, naming how many and why.
fn refuse_ungraded(items: &[ItemResult], out: &Path) -> Result<()> {
    let greedy = items.iter().filter(|i| i.greedy_ungraded.is_some()).count();
    let samples: usize = items.iter().map(|i| i.samples_ungraded).sum();
    if greedy + samples == 0 {
        return Ok(());
    }
    let first = items
        .iter()
        .find_map(|i| {
            i.greedy_ungraded
                .clone()
                .or(i.sample_ungraded_reason.clone())
        })
        .unwrap_or_default();
    bail!(
        "{greedy} of {} greedy completions and {samples} samples could not be graded, so no \
         accuracy is reported (the grader failed, not the model); the first: {first}. \
         Per-item results: {}",
        items.len(),
        out.join("items.jsonl").display()
    )
}

/// A hash of everything the results depend on besides the settings: the task file,
/// its records, the files its rewards read, the model's files and this build of rlvr.
/// Grading code changes often; results made by another build are never reused.
pub fn inputs_key(model_dir: &Path, task: &TaskConfig, task_path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let task_dir = task_path.parent().unwrap_or(Path::new("."));
    let mut hash = Sha256::new();
    let mut add = |label: &str, bytes: &[u8]| {
        hash.update((label.len() as u64).to_le_bytes());
        hash.update(label.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    add("task", &read(task_path)?);
    let records = crate::data::load_records(task, task_dir)?;
    add("records", serde_json::to_string(&records)?.as_bytes());
    for spec in &task.rewards {
        if let Some(script) = &spec.script {
            add("script", &read(&task_dir.join(script))?);
        }
        if let Some(model) = &spec.model {
            add(
                "reward model",
                files_stamp(&task_dir.join(model)).as_bytes(),
            );
        }
    }
    add("model", files_stamp(model_dir).as_bytes());
    add("build", crate::build_info::fingerprint().as_bytes());
    Ok(format!("{:x}", hash.finalize()))
}

/// Names, sizes and modification times of a folder's files (not its subfolders): what
/// changes when a checkpoint is written again, without reading gigabytes of weights.
fn files_stamp(dir: &Path) -> String {
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            Some(format!(
                "{:?} {} {}",
                e.file_name(),
                meta.len(),
                modified.as_nanos()
            ))
        })
        .collect();
    entries.sort();
    entries.join("\n")
}

type Row = (Completion, String, Scored);

/// One item's results from its greedy completion and its samples.
fn item_result(
    index: usize,
    prompt: &Prompt,
    (completion, text, scored): &Row,
    samples: &[Row],
    names: &[String],
) -> ItemResult {
    let sample_correct: Vec<bool> = samples.iter().map(|(_, _, s)| s.solved()).collect();
    let sample_failures: Vec<String> = samples.iter().filter_map(|(_, _, s)| failure(s)).collect();
    ItemResult {
        index,
        prompt: prompt.text.clone(),
        category: prompt
            .record
            .get("category")
            .and_then(Value::as_str)
            .map(String::from),
        greedy_completion: text.clone(),
        greedy_correct: scored.solved(),
        greedy_rewards: names
            .iter()
            .zip(&scored.per_function)
            .filter_map(|(name, s)| Some((name.clone(), s.graded_value()?)))
            .collect(),
        greedy_ungraded: failure(scored),
        samples_ungraded: sample_failures.len(),
        sample_ungraded_reason: sample_failures.into_iter().next(),
        greedy_tokens: completion.token_ids.len(),
        samples_correct: sample_correct.iter().filter(|&&c| c).count(),
        sample_answers: samples.iter().map(|(_, t, _)| final_answer(t)).collect(),
        sample_correct,
    }
}

/// Generates and scores one completion per entry of `rows` (prompt indices), in
/// chunks whose sampling parameters depend only on the chunk number.
fn run_rows(
    model: &Model,
    tokenizer: &Tokenizer,
    rewards: &RewardSet,
    prompts: &[Prompt],
    rows: &[usize],
    params: impl Fn(usize) -> SamplingParams,
) -> Result<Vec<Row>> {
    const CHUNK: usize = 128;
    let mut out = Vec::with_capacity(rows.len());
    for (chunk_index, chunk) in rows.chunks(CHUNK).enumerate() {
        let ids: Vec<Vec<i64>> = chunk.iter().map(|&i| prompts[i].ids.clone()).collect();
        let completions = sample::generate(&model.transformer, &ids, &params(chunk_index), None)?;
        let texts: Vec<String> = completions
            .iter()
            .map(|c| tokenizer.decode_completion(&c.token_ids))
            .collect::<Result<_>>()?;
        let samples: Vec<Sample> = chunk
            .iter()
            .zip(&texts)
            .zip(&completions)
            .map(|((&i, text), completion)| {
                Sample::new(
                    &prompts[i].record,
                    &prompts[i].text,
                    text,
                    completion.token_ids.len(),
                )
                .after(&prompts[i].chat_text)
            })
            .collect();
        let scored = rewards.score_batch(&samples);
        out.extend(
            completions
                .into_iter()
                .zip(texts)
                .zip(scored)
                .map(|((c, t), s)| (c, t, s)),
        );
    }
    Ok(out)
}

/// The final answer a completion commits to (the math extractor's, else its text).
fn final_answer(text: &str) -> String {
    match extract_answer(text, &MathOptions::default()) {
        Ok(extracted) => extracted.answer,
        Err(_) => text.trim().to_string(),
    }
}

/// maj@k for one item: is the most common answer among the first k samples right?
/// Ties go to the answer seen first.
pub fn majority_correct(answers: &[String], correct: &[bool], k: usize) -> bool {
    let mut counts: Vec<(&String, usize, bool)> = Vec::new();
    for (answer, &ok) in answers.iter().zip(correct).take(k) {
        match counts.iter_mut().find(|(a, _, _)| *a == answer) {
            Some(entry) => entry.1 += 1,
            None => counts.push((answer, 1, ok)),
        }
    }
    let best = counts.iter().map(|c| c.1).max().unwrap_or(0);
    counts.iter().find(|c| c.1 == best).is_some_and(|c| c.2)
}

fn summarize(
    (model, task, key): (&Path, &str, &str),
    settings: &EvalSettings,
    items: &[ItemResult],
    names: &[String],
    seconds: f64,
) -> EvalSummary {
    let n = items.len() as f64;
    let mean = |f: &dyn Fn(&ItemResult) -> f64| items.iter().map(f).sum::<f64>() / n;
    let pass_at_k = ks(settings.samples)
        .into_iter()
        .map(|k| {
            (
                k,
                mean(&|i| pass_at_k(settings.samples, i.samples_correct, k)),
            )
        })
        .collect();
    let maj_at_k = ks(settings.samples)
        .into_iter()
        .map(|k| {
            let hits = mean(&|i| {
                f64::from(u8::from(majority_correct(
                    &i.sample_answers,
                    &i.sample_correct,
                    k,
                )))
            });
            (k, hits)
        })
        .collect();
    EvalSummary {
        model: model.to_path_buf(),
        task: task.to_string(),
        items: items.len(),
        settings: settings.clone(),
        inputs_key: key.to_string(),
        accuracy: mean(&|i| f64::from(u8::from(i.greedy_correct))),
        pass_at_k,
        maj_at_k,
        mean_rewards: names
            .iter()
            .map(|name| (name.clone(), mean(&|i| i.greedy_rewards[name.as_str()])))
            .collect(),
        mean_length: mean(&|i| i.greedy_tokens as f64),
        seconds,
    }
}

fn save_items(dir: &Path, items: &[ItemResult]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Old results stop counting before new items replace them.
    let summary = dir.join("summary.json");
    if summary.exists() {
        std::fs::remove_file(&summary)
            .with_context(|| format!("cannot remove {}", summary.display()))?;
    }
    let lines: Vec<String> = items
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    let path = dir.join("items.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Written last: its presence marks complete, fully graded results.
fn save_summary(dir: &Path, summary: &EvalSummary) -> Result<()> {
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(summary)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

enum Saved {
    None,
    /// Saved results made from other inputs, and which.
    Stale(&'static str),
    Usable(Box<Evaluation>),
}

fn load_saved(dir: &Path, settings: &EvalSettings, key: &str) -> Result<Saved> {
    let summary_path = dir.join("summary.json");
    let Ok(text) = std::fs::read_to_string(&summary_path) else {
        return Ok(Saved::None);
    };
    let Ok(summary) = serde_json::from_str::<EvalSummary>(&text) else {
        return Ok(Saved::Stale("unreadable, or from an older rlvr"));
    };
    if &summary.settings != settings {
        return Ok(Saved::None);
    }
    if summary.inputs_key != key {
        return Ok(Saved::Stale(
            "the task, its records or reward files, the model or the rlvr build changed",
        ));
    }
    let items_path = dir.join("items.jsonl");
    let items: Vec<ItemResult> = std::fs::read_to_string(&items_path)
        .with_context(|| format!("cannot read {}", items_path.display()))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: unreadable", items_path.display()))?;
    if items.len() != summary.items {
        return Ok(Saved::Stale("items.jsonl does not match the summary"));
    }
    Ok(Saved::Usable(Box::new(Evaluation {
        summary,
        items,
        reused: true,
    })))
}

/// The summary as a short text block for the terminal.
pub fn print_summary(summary: &EvalSummary) {
    println!(
        "{} on {} ({} items, {:.1} s)",
        summary.model.display(),
        summary.task,
        summary.items,
        summary.seconds
    );
    println!("  greedy accuracy  {:.4}", summary.accuracy);
    for (k, v) in &summary.pass_at_k {
        println!("  pass@{k:<3}         {v:.4}");
    }
    for (k, v) in summary.maj_at_k.iter().filter(|(k, _)| **k > 1) {
        println!("  maj@{k:<3}          {v:.4}");
    }
    for (name, v) in &summary.mean_rewards {
        println!("  reward {name:<10} {v:.4}");
    }
    println!("  mean length      {:.1} tokens", summary.mean_length);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_combinatorial_formula() {
        // 1 - C(n-c, k) / C(n, k) computed directly for small cases.
        fn choose(n: usize, k: usize) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
        }
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let direct = 1.0 - choose(n - c, k) / choose(n, k);
                    let got = pass_at_k(n, c, k);
                    assert!(
                        (got - direct).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {direct}"
                    );
                }
            }
        }
        assert_eq!(pass_at_k(8, 2, 1), 0.25);
        assert!(pass_at_k(4, 1, 8).is_nan());
    }

    #[test]
    fn majority_vote_takes_the_most_common_answer() {
        let answers: Vec<String> = ["3", "4", "4", "3", "4"].map(String::from).to_vec();
        let correct = [true, false, false, true, false];
        assert!(majority_correct(&answers, &correct, 1));
        assert!(
            majority_correct(&answers, &correct, 2),
            "a tie goes to the first answer"
        );
        assert!(!majority_correct(&answers, &correct, 5));
    }

    #[test]
    fn ks_are_powers_of_two_up_to_n() {
        assert_eq!(ks(8), vec![1, 2, 4, 8]);
        assert_eq!(ks(6), vec![1, 2, 4]);
        assert!(ks(0).is_empty());
    }
}
