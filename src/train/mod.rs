//! Training: one loop shared by pretraining, SFT and RL.
//!
//! A stage is an [`Objective`]: given the model and the step number it runs its
//! forward and backward passes (gradient accumulation lives there, since what a
//! micro-batch is differs by stage) and returns the step's metrics. The [`train`] loop
//! owns everything else: AdamW, the learning-rate schedule, gradient clipping, the
//! progress bar, metrics.jsonl, checkpoints and resuming.

pub mod advantage;
pub mod batch;
pub mod grpo;
pub mod loss;
pub mod optim;
pub mod ppo;
pub mod pretrain;
pub mod recompute;
pub mod reward_model;
pub mod rollout;
pub mod sft;
pub mod threads;
pub mod token_loss;

use crate::config::RunConfig;
use crate::config::run::{Algorithm, Device};
use crate::model::checkpoint::{replace_dir, staging_dir};
use crate::model::{Model, ModelConfig};
use crate::run::{self, Metrics, OPTIMIZER, RunDir};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use optim::AdamW;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub trait Objective {
    /// Forward and backward passes for optimizer step `step` (0-based): gradients
    /// accumulate in the model's variables. Returns the step's metrics, with `loss`.
    fn accumulate(&mut self, model: &Model, step: usize, run: &RunDir) -> Result<Metrics>;

    /// What a checkpoint must record to resume this objective (beyond the step).
    fn state(&self) -> Value {
        Value::Null
    }

    fn restore(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}

/// How a run starts; the run folder checks it (see [`RunDir::open`]).
pub use crate::run::StartOptions;

pub fn tch_device(device: Device) -> Result<tch::Device> {
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        Device::Cuda => bail!("device: cuda was asked for but libtorch sees no CUDA device"),
    }
}

/// The policy a run starts from (a model folder, or a new model from `model.init`)
/// and the tokenizer.json that goes with it.
/// The run's tokenizer, rendering chats with the config's `chat_template_kwargs`.
pub fn run_tokenizer(config: &RunConfig, path: &std::path::Path) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::load(path)?;
    tokenizer
        .set_template_kwargs(config.chat_template_kwargs.clone())
        .with_context(|| format!("{}", path.display()))?;
    Ok(tokenizer)
}

pub fn initial_model(config: &RunConfig) -> Result<(Model, PathBuf)> {
    let device = tch_device(config.device)?;
    let section = &config.model;
    if let Some(path) = &section.path {
        let model = Model::load(path, device, section.dtype)?;
        let tokenizer = section
            .tokenizer
            .clone()
            .unwrap_or(path.join("tokenizer.json"));
        check_vocabulary(&model, &tokenizer)?;
        return Ok((model, tokenizer));
    }
    let init = section
        .init
        .as_ref()
        .context("model: neither path nor init")?;
    let tokenizer_path = section
        .tokenizer
        .clone()
        .context("model.init needs model.tokenizer")?;
    if !tokenizer_path.exists() {
        pretrain::train_tokenizer(config, &tokenizer_path)?;
    }
    let tokenizer = Tokenizer::load(&tokenizer_path)?;
    let model_config = ModelConfig::tiny_qwen2(
        tokenizer.vocab_size(),
        init.hidden_size,
        init.num_hidden_layers,
        init.num_attention_heads,
    );
    // New weights come from the run's seed alone, so that a run repeats exactly.
    let model = Model::random(&model_config, device, section.dtype, config.seed)?;
    Ok((model, tokenizer_path))
}

/// A tokenizer that emits ids the model has no embedding for would fail mid-run.
fn check_vocabulary(model: &Model, tokenizer: &Path) -> Result<()> {
    if !tokenizer.exists() {
        bail!(
            "{}: no tokenizer.json (set model.tokenizer to one)",
            tokenizer.display()
        );
    }
    let size = Tokenizer::load(tokenizer)?.vocab_size();
    let vocab = model.config().vocab_size;
    if size > vocab {
        bail!(
            "{}: the tokenizer has {size} tokens but the model's vocab_size is {vocab}",
            tokenizer.display()
        );
    }
    Ok(())
}

/// `rlvr rl`: the algorithm the config's `rl.algorithm` names, GRPO or PPO.
pub fn rl(config: &RunConfig, options: StartOptions) -> Result<PathBuf> {
    match config.rl.as_ref().map(|rl| rl.algorithm) {
        Some(Algorithm::Ppo) => ppo::run(config, options),
        _ => grpo::run(config, options),
    }
}

/// Runs `objective` for `train.max_steps` optimizer steps; returns the final model folder.
pub fn train(
    config: &RunConfig,
    stage: &str,
    mut model: Model,
    tokenizer: &Path,
    objective: &mut dyn Objective,
    options: StartOptions,
) -> Result<PathBuf> {
    let run = RunDir::open(config, stage, options)?;
    let mut optimizer = AdamW::new(&model.vs, &config.optim);
    let mut start = 0;
    if options.resume {
        if let Some((step, dir)) = run.latest_checkpoint()? {
            model = Model::load(&dir, model.vs.device(), config.model.dtype)?;
            optimizer = AdamW::new(&model.vs, &config.optim);
            optimizer.load(&dir.join(OPTIMIZER))?;
            let state = run::read_trainer_state(&dir)?;
            objective.restore(&state["objective"])?;
            run.truncate_logs(step)?;
            start = step;
            eprintln!("resuming {} from {}", run.dir.display(), dir.display());
        } else {
            run.truncate_logs(0)?;
        }
    }
    let total = config.train.max_steps;
    let progress = progress_bar(stage, total, start);
    let mut governor = threads::ThreadGovernor::new(config.train.threads);
    for step in start..total {
        let started = Instant::now();
        let threads = governor.before_step();
        optimizer.zero_grad();
        let mut metrics = objective.accumulate(&model, step, &run)?;
        let loss = metrics.get("loss").copied().unwrap_or(0.0);
        let grad_norm = optimizer.clip_grad_norm(config.optim.max_grad_norm);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = run
                .latest_checkpoint()?
                .map_or("none yet".into(), |(_, dir)| dir.display().to_string());
            bail!(
                "step {}: the loss is {loss} and the gradient norm {grad_norm}; stopping \
                 before the update. The last good checkpoint is intact: {last}",
                step + 1
            );
        }
        let lr = optim::learning_rate(&config.optim, step, total);
        optimizer.step(lr);
        metrics.insert("grad_norm".into(), grad_norm);
        metrics.insert("learning_rate".into(), lr);
        metrics.insert("threads".into(), threads as f64);
        metrics.insert("time/step".into(), started.elapsed().as_secs_f64());
        let done = step + 1;
        if done % config.train.logging_steps == 0 || done == total {
            run.log_metrics(done, &metrics)?;
        }
        progress.set_message(headline(&metrics));
        progress.inc(1);
        let save_steps = config.train.save_steps;
        if (save_steps > 0 && done % save_steps == 0) || done == total {
            save_checkpoint(
                &run,
                done,
                config.seed,
                &model,
                tokenizer,
                &optimizer,
                objective,
            )?;
        }
    }
    progress.finish();
    model.save(&run.model_dir(), Some(tokenizer))?;
    Ok(run.model_dir())
}

fn save_checkpoint(
    run: &RunDir,
    step: usize,
    seed: u64,
    model: &Model,
    tokenizer: &Path,
    optimizer: &AdamW,
    objective: &dyn Objective,
) -> Result<()> {
    let dir = run.checkpoint_dir(step);
    let staging = staging_dir(&dir)?;
    model.write_files(&staging, Some(tokenizer))?;
    optimizer.save(&staging.join(OPTIMIZER))?;
    run::write_trainer_state(&staging, step, seed, objective.state())?;
    replace_dir(&staging, &dir)
}

fn progress_bar(stage: &str, total: usize, start: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{stage:>8} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start as u64);
    bar
}

/// The few metrics worth watching live.
fn headline(metrics: &Metrics) -> String {
    ["loss", "reward", "accuracy", "kl"]
        .iter()
        .filter_map(|name| metrics.get(*name).map(|v| format!("{name} {v:.4}")))
        .collect::<Vec<_>>()
        .join("  ")
}
