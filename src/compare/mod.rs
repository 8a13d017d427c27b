//! `rlvr compare A B [C…] --task T`: checkpoints side by side on the same items with
//! the same seeds. Accuracy with Wilson intervals; against the first checkpoint, the
//! paired difference with an exact McNemar test and a paired bootstrap interval;
//! pass@k curves; a terminal table and a self-contained HTML report with SVG plots.

pub mod report;
pub mod stats;
pub mod svg;

use crate::eval::{self, EvalSettings, Evaluation};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

pub const CONFIDENCE: f64 = 0.95;
const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// One checkpoint's results with its label.
pub struct Entry {
    pub label: String,
    pub evaluation: Evaluation,
    pub accuracy_interval: (f64, f64),
}

/// A checkpoint against the baseline (the first one), item by item.
pub struct Paired {
    pub label: String,
    pub difference: f64,
    pub bootstrap_interval: (f64, f64),
    /// Items only the baseline solves / only this checkpoint solves.
    pub only_baseline: usize,
    pub only_this: usize,
    pub p_value: f64,
}

pub struct Comparison {
    pub task: String,
    pub entries: Vec<Entry>,
    pub paired: Vec<Paired>,
}

/// A short name for a model folder: `runs/demo/sft/model` → `sft`.
pub fn label(model: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(model).as_deref() {
        Some("model") => model
            .parent()
            .and_then(name)
            .unwrap_or_else(|| "model".into()),
        Some(other) => other.to_string(),
        None => model.display().to_string(),
    }
}

pub fn compare(models: &[PathBuf], task: &Path, settings: &EvalSettings) -> Result<Comparison> {
    if models.len() < 2 {
        bail!("compare needs at least two model folders");
    }
    let mut entries = Vec::new();
    for model in models {
        let evaluation = eval::evaluate(model, task, settings)?;
        let solved = evaluation.items.iter().filter(|i| i.greedy_correct).count();
        entries.push(Entry {
            label: label(model),
            accuracy_interval: stats::wilson(solved, evaluation.items.len(), CONFIDENCE),
            evaluation,
        });
    }
    let baseline: Vec<bool> = entries[0]
        .evaluation
        .items
        .iter()
        .map(|i| i.greedy_correct)
        .collect();
    let paired = entries[1..]
        .iter()
        .map(|entry| {
            let other: Vec<bool> = entry
                .evaluation
                .items
                .iter()
                .map(|i| i.greedy_correct)
                .collect();
            let only_baseline = baseline
                .iter()
                .zip(&other)
                .filter(|(a, b)| **a && !**b)
                .count();
            let only_this = baseline
                .iter()
                .zip(&other)
                .filter(|(a, b)| !**a && **b)
                .count();
            Paired {
                label: entry.label.clone(),
                difference: entry.evaluation.summary.accuracy
                    - entries[0].evaluation.summary.accuracy,
                bootstrap_interval: stats::paired_bootstrap(
                    &baseline,
                    &other,
                    BOOTSTRAP_RESAMPLES,
                    CONFIDENCE,
                    settings.seed,
                ),
                only_baseline,
                only_this,
                p_value: stats::mcnemar_exact(only_baseline, only_this),
            }
        })
        .collect();
    Ok(Comparison {
        task: entries[0].evaluation.summary.task.clone(),
        entries,
        paired,
    })
}

/// The comparison as a terminal table.
pub fn print_table(comparison: &Comparison) {
    let first = &comparison.entries[0];
    let ks: Vec<usize> = first.evaluation.summary.pass_at_k.keys().copied().collect();
    println!(
        "\n{} items of {}, greedy accuracy with {:.0}% Wilson intervals:",
        first.evaluation.summary.items,
        comparison.task,
        CONFIDENCE * 100.0
    );
    let mut header = format!("  {:<14} {:>8} {:>17}", "model", "accuracy", "interval");
    for k in &ks {
        header += &format!(" {:>8}", format!("pass@{k}"));
    }
    header += &format!(" {:>8}", "length");
    println!("{header}");
    for entry in &comparison.entries {
        let summary = &entry.evaluation.summary;
        let mut row = format!(
            "  {:<14} {:>8.4}   [{:.4}, {:.4}]",
            entry.label, summary.accuracy, entry.accuracy_interval.0, entry.accuracy_interval.1
        );
        for k in &ks {
            row += &format!(
                " {:>8.4}",
                summary.pass_at_k.get(k).copied().unwrap_or(f64::NAN)
            );
        }
        row += &format!(" {:>8.1}", summary.mean_length);
        println!("{row}");
    }
    for paired in &comparison.paired {
        println!(
            "  {} − {}: {:+.4} (paired bootstrap {:.0}%: [{:+.4}, {:+.4}]); McNemar exact p = {:.2e} \
             ({} items only {} solves, {} only {})",
            paired.label,
            first.label,
            paired.difference,
            CONFIDENCE * 100.0,
            paired.bootstrap_interval.0,
            paired.bootstrap_interval.1,
            paired.p_value,
            paired.only_this,
            paired.label,
            paired.only_baseline,
            first.label
        );
    }
}
