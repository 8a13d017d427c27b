//! The comparison as one self-contained HTML file: tables, SVG plots (pass@k,
//! accuracy per category, each run's training curves) and items where the
//! checkpoints disagree. No scripts, no external files: it opens anywhere.

use super::svg::{self, Series};
use super::{CONFIDENCE, Comparison};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

/// Training metrics plotted when a checkpoint's run folder has them.
const CURVES: &[(&str, &str)] = &[
    ("reward", "mean reward"),
    ("accuracy", "accuracy (sampled)"),
    ("kl", "KL to the reference"),
    ("completions/mean_length", "completion length (tokens)"),
    ("entropy", "entropy"),
    ("loss", "loss"),
    ("overoptimization/proxy", "learned reward model (proxy)"),
    ("overoptimization/gold", "gold reward"),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn write(comparison: &Comparison, path: &Path) -> Result<()> {
    let html = render(comparison);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))
}

pub fn render(comparison: &Comparison) -> String {
    let mut html = String::new();
    let first = &comparison.entries[0];
    let summary = &first.evaluation.summary;
    let _ = write!(
        html,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rlvr comparison: {task}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}td.l{{text-align:left}}\
         .plots{{display:flex;flex-wrap:wrap;gap:12px}}pre{{white-space:pre-wrap;margin:0;font-size:12px}}</style></head><body>\
         <h1>Checkpoint comparison on <code>{task}</code></h1>\
         <p>{items} items; greedy decoding for accuracy, {n} samples per item at temperature {t} for pass@k \
         (unbiased estimator) and maj@k; seed {seed}. Intervals are {conf:.0}%.</p>",
        task = escape(&comparison.task),
        items = summary.items,
        n = summary.settings.samples,
        t = summary.settings.temperature,
        seed = summary.settings.seed,
        conf = CONFIDENCE * 100.0,
    );
    accuracy_table(&mut html, comparison);
    paired_table(&mut html, comparison);
    html.push_str("<h2>Plots</h2><div class=\"plots\">");
    html.push_str(&pass_at_k_plot(comparison));
    if let Some(plot) = category_plot(comparison) {
        html.push_str(&plot);
    }
    html.push_str("</div><h2>Training curves</h2>");
    let runs = run_metrics(comparison);
    overoptimization_banner(&mut html, &runs);
    html.push_str("<div class=\"plots\">");
    let curves = training_curves(&runs);
    if curves.is_empty() {
        html.push_str("<p>No run folders with metrics.jsonl beside these checkpoints.</p>");
    }
    for plot in curves {
        html.push_str(&plot);
    }
    html.push_str("</div>");
    disagreements(&mut html, comparison);
    html.push_str("</body></html>\n");
    html
}

fn accuracy_table(html: &mut String, comparison: &Comparison) {
    let summary = &comparison.entries[0].evaluation.summary;
    html.push_str(
        "<h2>Accuracy</h2><table><tr><th>model</th><th>greedy accuracy</th><th>interval</th>",
    );
    for k in summary.pass_at_k.keys() {
        let _ = write!(html, "<th>pass@{k}</th>");
    }
    for k in summary.maj_at_k.keys().filter(|k| **k > 1) {
        let _ = write!(html, "<th>maj@{k}</th>");
    }
    for name in summary.mean_rewards.keys() {
        let _ = write!(html, "<th>reward {}</th>", escape(name));
    }
    html.push_str("<th>mean length</th></tr>");
    for entry in &comparison.entries {
        let s = &entry.evaluation.summary;
        let _ = write!(
            html,
            "<tr><td class=\"l\">{}</td><td>{:.4}</td><td>[{:.4}, {:.4}]</td>",
            escape(&entry.label),
            s.accuracy,
            entry.accuracy_interval.0,
            entry.accuracy_interval.1
        );
        for v in s.pass_at_k.values() {
            let _ = write!(html, "<td>{v:.4}</td>");
        }
        for (_, v) in s.maj_at_k.iter().filter(|(k, _)| **k > 1) {
            let _ = write!(html, "<td>{v:.4}</td>");
        }
        for v in s.mean_rewards.values() {
            let _ = write!(html, "<td>{v:.4}</td>");
        }
        let _ = write!(html, "<td>{:.1}</td></tr>", s.mean_length);
    }
    html.push_str("</table>");
}

fn paired_table(html: &mut String, comparison: &Comparison) {
    let baseline = escape(&comparison.entries[0].label);
    let _ = write!(
        html,
        "<h2>Against {baseline}, item by item</h2><table><tr><th>model</th><th>difference</th>\
         <th>paired bootstrap interval</th><th>only it solves</th><th>only {baseline} solves</th>\
         <th>McNemar exact p</th></tr>"
    );
    for p in &comparison.paired {
        let _ = write!(
            html,
            "<tr><td class=\"l\">{}</td><td>{:+.4}</td><td>[{:+.4}, {:+.4}]</td><td>{}</td><td>{}</td><td>{:.2e}</td></tr>",
            escape(&p.label),
            p.difference,
            p.bootstrap_interval.0,
            p.bootstrap_interval.1,
            p.only_this,
            p.only_baseline,
            p.p_value
        );
    }
    html.push_str("</table>");
}

fn pass_at_k_plot(comparison: &Comparison) -> String {
    let series: Vec<Series> = comparison
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| Series {
            colour: i,
            name: e.label.clone(),
            points: e
                .evaluation
                .summary
                .pass_at_k
                .iter()
                .map(|(&k, &v)| (k as f64, v))
                .collect(),
        })
        .collect();
    svg::line_chart("pass@k", "k (samples)", "pass@k", &series, Some((0.0, 1.0)))
}

fn category_plot(comparison: &Comparison) -> Option<String> {
    let categories: BTreeSet<String> = comparison.entries[0]
        .evaluation
        .items
        .iter()
        .filter_map(|i| i.category.clone())
        .collect();
    if categories.is_empty() {
        return None;
    }
    let categories: Vec<String> = categories.into_iter().collect();
    let series = comparison
        .entries
        .iter()
        .map(|e| {
            let accuracy = categories
                .iter()
                .map(|c| {
                    let items: Vec<bool> = e
                        .evaluation
                        .items
                        .iter()
                        .filter(|i| i.category.as_ref() == Some(c))
                        .map(|i| i.greedy_correct)
                        .collect();
                    items.iter().filter(|&&x| x).count() as f64 / items.len().max(1) as f64
                })
                .collect();
            (e.label.clone(), accuracy)
        })
        .collect::<Vec<_>>();
    Some(svg::bar_chart(
        "greedy accuracy per category",
        &categories,
        &series,
    ))
}

/// A checkpoint's run metrics (from the run folder above the model), with the
/// checkpoint's index (its colour) and label.
type RunMetrics = Vec<(usize, String, Vec<serde_json::Value>)>;

fn run_metrics(comparison: &Comparison) -> RunMetrics {
    comparison
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let run_dir = e.evaluation.summary.model.parent()?;
            let rows = crate::run::RunDir::read_metrics(run_dir).ok()?;
            Some((i, e.label.clone(), rows))
        })
        .collect()
}

fn training_curves(runs: &RunMetrics) -> Vec<String> {
    CURVES
        .iter()
        .filter_map(|(key, title)| {
            let series: Vec<Series> = runs
                .iter()
                .filter_map(|(colour, label, rows)| {
                    let points: Vec<(f64, f64)> = rows
                        .iter()
                        .filter_map(|r| Some((r["step"].as_f64()?, r.get(*key)?.as_f64()?)))
                        .collect();
                    (!points.is_empty()).then(|| Series {
                        name: label.clone(),
                        points,
                        colour: *colour,
                    })
                })
                .collect();
            (!series.is_empty()).then(|| svg::line_chart(title, "step", key, &series, None))
        })
        .collect()
}

/// A warning for each run whose metrics flag reward over-optimisation.
fn overoptimization_banner(html: &mut String, runs: &RunMetrics) {
    for (_, label, rows) in runs {
        let flagged: Vec<u64> = rows
            .iter()
            .filter(|r| r.get("overoptimization/flag").and_then(|v| v.as_f64()) == Some(1.0))
            .filter_map(|r| r["step"].as_u64())
            .collect();
        if let (Some(first), Some(last)) = (flagged.first(), flagged.last()) {
            let _ = write!(
                html,
                "<p class=\"warning\" style=\"background:#fde2e2;padding:8px\"><b>Reward over-optimisation \
                 in {}:</b> over the last batches the learned reward model's score rose while the gold \
                 reward fell ({} flagged steps, {first}–{last}).</p>",
                escape(label),
                flagged.len()
            );
        }
    }
}

/// Up to eight items where the first two checkpoints' greedy answers differ in correctness.
fn disagreements(html: &mut String, comparison: &Comparison) {
    let [a, b, ..] = comparison.entries.as_slice() else {
        return;
    };
    let rows: Vec<_> = a
        .evaluation
        .items
        .iter()
        .zip(&b.evaluation.items)
        .filter(|(x, y)| x.greedy_correct != y.greedy_correct)
        .take(8)
        .collect();
    let _ = write!(
        html,
        "<h2>Items where {} and {} disagree</h2><table><tr><th>prompt</th><th>{}</th><th>{}</th></tr>",
        escape(&a.label),
        escape(&b.label),
        escape(&a.label),
        escape(&b.label)
    );
    let mark = |ok: bool| if ok { "✔" } else { "✘" };
    for (x, y) in rows {
        let _ = write!(
            html,
            "<tr><td class=\"l\"><pre>{}</pre></td><td class=\"l\"><pre>{} {}</pre></td><td class=\"l\"><pre>{} {}</pre></td></tr>",
            escape(&x.prompt),
            mark(x.greedy_correct),
            escape(&x.greedy_completion),
            mark(y.greedy_correct),
            escape(&y.greedy_completion)
        );
    }
    html.push_str("</table>");
}
