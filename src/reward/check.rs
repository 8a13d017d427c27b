//! `rlvr reward-check`: runs a task's rewards over every record's reference
//! completion (or over given completions) before a run starts, and reports means,
//! verdicts, the slowest jobs and any infrastructure errors.

use super::{RewardSet, Sample, Scored};
use crate::config::TaskConfig;
use crate::data;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub struct CheckOptions<'a> {
    /// jsonl of `{"completion": ...}` (with an optional `"index"` into the records).
    pub completions: Option<&'a Path>,
    pub limit: Option<usize>,
    pub show_slowest: usize,
    pub show_failures: usize,
}

/// What the check found; `infra_errors > 0` makes the command fail.
pub struct CheckReport {
    pub records: usize,
    pub means: Vec<(String, f64)>,
    pub verdicts: BTreeMap<String, usize>,
    pub infra_errors: usize,
}

pub fn run(task_path: &Path, options: &CheckOptions) -> Result<CheckReport> {
    let task = TaskConfig::load(task_path)?;
    let task_dir = task_path.parent().unwrap_or(Path::new("."));
    let mut records = data::load_records(&task, task_dir)?;
    if let Some(limit) = options.limit {
        records.truncate(limit);
    }
    let completions = match options.completions {
        Some(path) => read_completions(path, records.len())?,
        None => reference_completions(&task, &records)?,
    };
    let prompts: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, r)| data::render_prompt(&task.prompt, r).with_context(|| format!("record {i}")))
        .collect::<Result<_>>()?;
    let rewards = RewardSet::from_task(&task, task_dir)?;
    let samples: Vec<Sample> = completions
        .iter()
        .map(|(index, completion)| {
            // No tokenizer here: words stand in for tokens (only `overlong` reads it).
            let words = completion.split_whitespace().count();
            Sample::new(&records[*index], &prompts[*index], completion, words)
        })
        .collect();
    let started = std::time::Instant::now();
    let scored = rewards.score_batch(&samples);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "task {}: scored {} completions with {} reward function(s) in {elapsed:.2} s ({:.1} completions/s, {} threads)",
        task.name,
        scored.len(),
        rewards.functions.len(),
        scored.len() as f64 / elapsed.max(1e-9),
        rayon::current_num_threads()
    );
    Ok(report(&rewards, &completions, &scored, options))
}

fn report(
    rewards: &RewardSet,
    completions: &[(usize, String)],
    scored: &[Scored],
    options: &CheckOptions,
) -> CheckReport {
    // Means over what was graded; grader failures are counted below, apart.
    let mean = |values: Vec<f64>| values.iter().sum::<f64>() / values.len().max(1) as f64;
    let mut means = Vec::new();
    for (f, (name, weight, _)) in rewards.functions.iter().enumerate() {
        let mean = mean(
            scored
                .iter()
                .filter_map(|s| s.per_function[f].graded_value())
                .collect(),
        );
        println!("  {name:<20} weight {weight:<5} mean {mean:.4}");
        means.push((name.clone(), mean));
    }
    let total = mean(
        scored
            .iter()
            .filter(|s| s.graded())
            .map(|s| s.total)
            .collect(),
    );
    println!("  {:<20} {:<12} mean {total:.4}", "weighted total", "");

    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for score in scored.iter().flat_map(|s| &s.per_function) {
        if let Some(verdict) = score.verdict {
            *verdicts.entry(verdict.name().to_string()).or_default() += 1;
        }
    }
    if !verdicts.is_empty() {
        let counts: Vec<String> = verdicts.iter().map(|(v, c)| format!("{v} {c}")).collect();
        println!("verdicts: {}", counts.join(", "));
    }

    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| scored[b].seconds.total_cmp(&scored[a].seconds));
    println!("slowest:");
    for &i in order.iter().take(options.show_slowest) {
        println!(
            "  record {:<6} {:.3} s",
            completions[i].0, scored[i].seconds
        );
    }

    let failures: Vec<(usize, &str, &str)> = scored
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.per_function
                .iter()
                .zip(rewards.names())
                .filter(|(score, _)| score.value <= 0.0 && score.infra_error.is_none())
                .map(move |(score, name)| (i, name, score.reason.as_str()))
        })
        .collect();
    if !failures.is_empty() {
        println!(
            "zero-scored ({} in all), first {}:",
            failures.len(),
            options.show_failures.min(failures.len())
        );
        for (i, name, reason) in failures.iter().take(options.show_failures) {
            println!(
                "  record {:<6} {name}: {}",
                completions[*i].0,
                one_line(reason)
            );
        }
    }
    let infra: Vec<(usize, &str)> = scored
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.per_function
                .iter()
                .filter_map(move |score| score.infra_error.as_deref().map(|e| (i, e)))
        })
        .collect();
    println!("infrastructure errors: {}", infra.len());
    for (i, error) in infra.iter().take(10) {
        println!("  record {:<6} {}", completions[*i].0, one_line(error));
    }
    CheckReport {
        records: scored.len(),
        means,
        verdicts,
        infra_errors: infra.len(),
    }
}

fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(160).collect()
}

/// Each record's reference completion, from the task's `reference_field`.
pub(crate) fn reference_completions(
    task: &TaskConfig,
    records: &[Value],
) -> Result<Vec<(usize, String)>> {
    let Some(field) = &task.reference_field else {
        bail!(
            "task `{}` has no `reference_field`; pass --completions FILE",
            task.name
        );
    };
    records
        .iter()
        .enumerate()
        .map(|(i, record)| match record.get(field) {
            Some(Value::String(text)) => Ok((i, text.clone())),
            _ => bail!("record {i} has no string field `{field}`"),
        })
        .collect()
}

/// Completions from jsonl; line i scores record i unless it names an `index`.
fn read_completions(path: &Path, records: usize) -> Result<Vec<(usize, String)>> {
    data::read_jsonl(path)?
        .into_iter()
        .enumerate()
        .map(|(line, row)| {
            let index = row
                .get("index")
                .and_then(Value::as_u64)
                .map_or(line, |i| i as usize);
            let completion = row
                .get("completion")
                .and_then(Value::as_str)
                .with_context(|| {
                    format!("{}:{}: no string `completion`", path.display(), line + 1)
                })?;
            if index >= records {
                bail!(
                    "{}:{}: index {index} is past the {records} records",
                    path.display(),
                    line + 1
                );
            }
            Ok((index, completion.to_string()))
        })
        .collect()
}
