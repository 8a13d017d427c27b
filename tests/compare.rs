//! Evaluation and comparison on tiny models: per-item results are saved and reused,
//! the statistics are consistent with the items, and the HTML report carries its plots
//! (checked in headless Chromium when it is installed: `make test` installs it).

mod common;

use rlvr::compare::{self, report};
use rlvr::config::RunConfig;
use rlvr::config::run::Dtype;
use rlvr::eval::{self, EvalSettings};
use rlvr::model::{Model, ModelConfig};
use rlvr::tokenizer::Tokenizer;
use rlvr::train::{self, StartOptions};
use std::path::{Path, PathBuf};

/// A tokenizer, a random tiny model, a "has a digit" task, and a model trained on it
/// for a few GRPO steps (so that it has a run folder with metrics).
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let corpus = (0..300).map(|i| format!("What is {i} + {}? #### {}", i * 3, i * 4));
    let tokenizer = Tokenizer::train_bpe(corpus, 300).unwrap();
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path).unwrap();
    let config = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 32, 1, 4);
    let base = dir.join("base/model");
    Model::random(&config, tch::Device::Cpu, Dtype::F32, 1)
        .unwrap()
        .save(&base, Some(&tokenizer_path))
        .unwrap();
    let task = dir.join("digits.yaml");
    std::fs::write(
        &task,
        "name: digits\nsource: {generator: arithmetic, num_examples: 40}\nprompt: \"{question}\"\n\
         answer_field: answer\nrewards: [{kind: regex, name: has_digit, pattern: '(?s).*[0-9].*'}]\n",
    )
    .unwrap();
    let rl = dir.join("rl.yaml");
    std::fs::write(
        &rl,
        format!(
            "name: tuned\noutput_dir: {out}\nmodel: {{path: {base}}}\ntask: {task}\n\
             optim: {{learning_rate: 2.0e-2, lr_scheduler: constant}}\ntrain: {{max_steps: 12, batch_size: 32}}\n\
             rl: {{prompts_per_step: 4, num_generations: 8, max_completion_length: 6}}\n",
            out = dir.display(),
            base = base.display(),
            task = task.display()
        ),
    )
    .unwrap();
    let tuned = train::rl(&RunConfig::load(&rl).unwrap(), StartOptions::default()).unwrap();
    (base, tuned, task)
}

fn settings() -> EvalSettings {
    EvalSettings {
        limit: Some(40),
        samples: 4,
        temperature: 1.0,
        max_new_tokens: 6,
        seed: 0,
        ..EvalSettings::default()
    }
}

#[test]
fn comparison_statistics_follow_the_items_and_results_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned, task) = setup(dir.path());
    let comparison = compare::compare(&[base.clone(), tuned.clone()], &task, &settings()).unwrap();
    assert_eq!(comparison.entries[0].label, "base");
    assert_eq!(comparison.entries[1].label, "tuned");
    let (a, b) = (
        &comparison.entries[0].evaluation,
        &comparison.entries[1].evaluation,
    );
    assert_eq!(a.items.len(), 40);
    for (x, y) in a.items.iter().zip(&b.items) {
        assert_eq!(x.prompt, y.prompt, "both checkpoints see the same items");
        assert_eq!(x.sample_correct.len(), 4);
    }
    let solved = |e: &eval::Evaluation| e.items.iter().filter(|i| i.greedy_correct).count();
    assert_eq!(a.summary.accuracy, solved(a) as f64 / 40.0);
    let paired = &comparison.paired[0];
    let only_tuned = a
        .items
        .iter()
        .zip(&b.items)
        .filter(|(x, y)| !x.greedy_correct && y.greedy_correct)
        .count();
    assert_eq!(paired.only_this, only_tuned);
    assert!((0.0..=1.0).contains(&paired.p_value));
    assert!(
        paired.bootstrap_interval.0 <= paired.difference
            && paired.difference <= paired.bootstrap_interval.1
    );
    // pass@1 from 4 samples is the mean fraction of correct samples.
    let fraction = a
        .items
        .iter()
        .map(|i| i.samples_correct as f64 / 4.0)
        .sum::<f64>()
        / 40.0;
    assert!((a.summary.pass_at_k[&1] - fraction).abs() < 1e-12);
    assert!(a.summary.pass_at_k[&4] >= a.summary.pass_at_k[&1]);
    // The tuned model learned to write digits.
    assert!(b.summary.pass_at_k[&1] > a.summary.pass_at_k[&1]);

    let saved = eval::results_dir(&tuned, "digits");
    assert!(saved.join("items.jsonl").exists() && saved.join("summary.json").exists());
    let again = eval::evaluate(&tuned, &task, &settings()).unwrap();
    assert_eq!(
        again.summary.seconds, b.summary.seconds,
        "reused, not recomputed"
    );
    let other = EvalSettings {
        seed: 1,
        ..settings()
    };
    let fresh = eval::evaluate(&tuned, &task, &other).unwrap();
    assert_ne!(
        fresh.summary.seconds, b.summary.seconds,
        "other settings recompute"
    );

    let html = report::render(&comparison);
    assert!(
        html.matches("<svg class=\"plot\"").count() >= 3,
        "pass@k + training curves"
    );
    assert!(
        html.contains("McNemar") && html.contains("tuned") && html.contains("data-kind=\"line\"")
    );
    assert!(!html.contains("Reward over-optimisation"));
    // A run whose monitor flagged over-optimisation gets a warning in the report.
    let metrics = tuned.parent().unwrap().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text += "{\"step\": 13, \"overoptimization/proxy\": 0.9, \"overoptimization/gold\": 0.1, \"overoptimization/flag\": 1.0}\n";
    std::fs::write(&metrics, text).unwrap();
    let html = report::render(&comparison);
    assert!(
        html.contains("Reward over-optimisation") && html.contains("13–13"),
        "no warning"
    );
    assert!(
        html.contains("gold reward"),
        "the proxy and gold curves are plotted"
    );
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        common::skip_unless_required("no chromium (make test installs Debian's `chromium`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (base, tuned, task) = setup(dir.path());
    let comparison = compare::compare(&[base, tuned], &task, &settings()).unwrap();
    let path = dir.path().join("report.html");
    report::write(&comparison, &path).unwrap();
    let url = format!("file://{}", path.display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ];
    let dom = std::process::Command::new(chromium)
        .args(common)
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let plots = dom.matches("<svg class=\"plot\"").count();
    assert!(plots >= 3, "{plots} plots in the rendered DOM");
    assert!(dom.matches("<polyline class=\"series\"").count() >= 4);
    let screenshot = dir.path().join("report.png");
    let status = std::process::Command::new(chromium)
        .args(common)
        .arg(format!("--screenshot={}", screenshot.display()))
        .args(["--window-size=1200,1600", &url])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(&screenshot).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
}
