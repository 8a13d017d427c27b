//! GRPO (with DAPO's options): sample a group of completions per prompt, score them
//! with the task's rewards, turn rewards into group-relative advantages, and update
//! the policy with the clipped surrogate plus an optional KL to a frozen reference.
//!
//! One generation batch (`prompts_per_step` × `num_generations` completions) feeds
//! `num_iterations` optimizer steps; from the second on, the sampler's log-probs are
//! the "old" ones of the ratio. Each optimizer step runs the batch in micro-batches of
//! `train.batch_size` completions.

use super::Objective;
use super::advantage::{advantages, group_advantages};
use super::batch::{DataOrder, completion_logprobs, length_mask, padded_floats, step_seed};
use super::loss::{BatchShare, LossStats, PolicyLossConfig, policy_loss};
use super::pretrain::filter_records;
use crate::config::run::{Algorithm, RlSection, ScaleRewards};
use crate::config::{RunConfig, TaskConfig};
use crate::model::Model;
use crate::reward::{RewardSet, Sample, Scored};
use crate::run::{Metrics, RunDir};
use crate::sample::{self, Completion, FinishReason, SamplingParams};
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// A task record ready to prompt with.
pub struct Prompt {
    pub record: Value,
    /// The rendered prompt text (what reward functions see as the prompt).
    pub text: String,
    /// Chat-templated ids, ending with the assistant header.
    pub ids: Vec<i64>,
}

/// One sampled completion with everything the update and the logs need.
struct Rollout {
    prompt: usize,
    completion: Completion,
    text: String,
    scored: Scored,
    advantage: f64,
}

struct GenerationBatch {
    rollouts: Vec<Rollout>,
    /// Per rollout, the reference model's log-probs (when beta > 0).
    ref_logprobs: Option<Vec<Vec<f32>>>,
    metrics: Metrics,
}

pub struct Grpo {
    rl: RlSection,
    micro_batch: usize,
    seed: u64,
    sample_log_steps: usize,
    prompts: Vec<Prompt>,
    rewards: RewardSet,
    reward_names: Vec<String>,
    tokenizer: Tokenizer,
    stop_token_ids: Vec<i64>,
    reference: Option<Model>,
    order: DataOrder,
    /// Prompts drawn so far (dynamic sampling draws a varying number per step).
    cursor: usize,
    batch: Option<GenerationBatch>,
}

/// The task's records as prompts; records lacking the answer field or whose prompt
/// cannot be rendered are an error naming the record, or skipped (`on_bad_record`).
pub fn load_prompts(
    task: &TaskConfig,
    task_path: &Path,
    tokenizer: &Tokenizer,
    on_bad: crate::config::run::OnBadRecord,
) -> Result<Vec<Prompt>> {
    let task_dir = task_path.parent().unwrap_or(Path::new("."));
    let records = crate::data::load_records(task, task_dir)?;
    filter_records(&records, task_path, on_bad, |record| {
        if let Some(field) = &task.answer_field
            && record.get(field).is_none_or(Value::is_null)
        {
            bail!("no answer field `{field}`");
        }
        let text = crate::data::render_prompt(&task.prompt, record)?;
        let mut messages = Vec::new();
        if let Some(system) = &task.system_prompt {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: text.clone(),
        });
        let ids = tokenizer.render_chat(&messages, true)?.ids;
        Ok(Prompt {
            record: record.clone(),
            text,
            ids,
        })
    })
}

impl Grpo {
    pub fn new(config: &RunConfig, tokenizer_path: &Path, policy: &Model) -> Result<Self> {
        let rl = config
            .rl
            .clone()
            .context("an RL run needs an `rl` section")?;
        let task_path = config.task.clone().context("an RL run needs a `task`")?;
        let task = TaskConfig::load(&task_path)?;
        let tokenizer = Tokenizer::load(tokenizer_path)?;
        let prompts = load_prompts(&task, &task_path, &tokenizer, config.train.on_bad_record)?;
        if prompts.is_empty() {
            bail!("{}: no usable prompts", task_path.display());
        }
        let task_dir = task_path.parent().unwrap_or(Path::new("."));
        let rewards = RewardSet::from_task(&task, task_dir)
            .with_context(|| format!("{}: cannot build the rewards", task_path.display()))?;
        let mut stop_token_ids = policy.config().eos_token_ids();
        stop_token_ids.extend(tokenizer.token_id(tokenizer.chat_format.end_token()));
        let reference = if rl.beta > 0.0 {
            Some(reference_model(config, policy)?)
        } else {
            None
        };
        Ok(Self {
            micro_batch: config.train.batch_size,
            seed: config.seed,
            sample_log_steps: config.train.sample_log_steps,
            order: DataOrder::new(prompts.len(), config.seed),
            reward_names: rewards.names().iter().map(|s| s.to_string()).collect(),
            prompts,
            rewards,
            tokenizer,
            stop_token_ids,
            reference,
            cursor: 0,
            batch: None,
            rl,
        })
    }

    fn loss_config(&self) -> PolicyLossConfig {
        PolicyLossConfig {
            epsilon_low: self.rl.epsilon,
            epsilon_high: self.rl.epsilon_high(),
            beta: self.rl.beta,
            loss_type: self.rl.loss_type,
            max_completion_length: self.rl.max_completion_length,
        }
    }

    /// Samples and scores one draw of `prompts_per_step` prompts × G completions.
    fn draw(
        &mut self,
        model: &Model,
        step: usize,
        draw: u64,
        timing: &mut Metrics,
    ) -> Result<Vec<Rollout>> {
        let group = self.rl.num_generations;
        let picks: Vec<usize> = (0..self.rl.prompts_per_step)
            .map(|i| self.order.get(self.cursor + i))
            .collect();
        self.cursor += picks.len();
        let rows: Vec<Vec<i64>> = picks
            .iter()
            .flat_map(|&p| std::iter::repeat_n(self.prompts[p].ids.clone(), group))
            .collect();
        let params = SamplingParams {
            max_new_tokens: self.rl.max_completion_length,
            temperature: self.rl.temperature,
            top_k: self.rl.top_k,
            top_p: self.rl.top_p,
            stop_token_ids: self.stop_token_ids.clone(),
            stop_strings: Vec::new(),
            seed: step_seed(self.seed, step, draw),
        };
        let started = Instant::now();
        let completions = sample::generate(&model.transformer, &rows, &params, None)?;
        *timing.entry("time/sample".into()).or_default() += started.elapsed().as_secs_f64();

        let started = Instant::now();
        // Checkpoints often pad the embedding past the tokenizer (Qwen2: 151936 rows for
        // 151665 tokens); ids there have no text and decode to nothing.
        let known = self.tokenizer.vocab_size() as i64;
        let texts: Vec<String> = completions
            .iter()
            .map(|c| {
                let ids: Vec<i64> = c
                    .token_ids
                    .iter()
                    .copied()
                    .filter(|&id| id < known)
                    .collect();
                self.tokenizer.decode(&ids, true)
            })
            .collect::<Result<_>>()?;
        let owners: Vec<usize> = picks
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, group))
            .collect();
        let samples: Vec<Sample> = owners
            .iter()
            .zip(&texts)
            .zip(&completions)
            .map(|((&p, text), completion)| Sample {
                record: &self.prompts[p].record,
                prompt: &self.prompts[p].text,
                completion: text,
                completion_tokens: completion.token_ids.len(),
            })
            .collect();
        let scored = self.rewards.score_batch(&samples);
        *timing.entry("time/score".into()).or_default() += started.elapsed().as_secs_f64();
        Ok(owners
            .into_iter()
            .zip(completions)
            .zip(texts)
            .zip(scored)
            .map(|(((prompt, completion), text), scored)| Rollout {
                prompt,
                completion,
                text,
                scored,
                advantage: 0.0,
            })
            .collect())
    }

    /// A full generation batch: draws until enough groups have reward spread (DAPO
    /// dynamic sampling, capped by `dynamic_sampling_max_draws`), then advantages.
    fn generate_batch(&mut self, model: &Model, step: usize) -> Result<GenerationBatch> {
        let group = self.rl.num_generations;
        let wanted = self.rl.prompts_per_step;
        let mut metrics = Metrics::new();
        let (mut kept, mut flat) = (Vec::new(), Vec::new());
        let mut draws = 0;
        loop {
            let rollouts = self.draw(model, step, draws, &mut metrics)?;
            draws += 1;
            let dynamic = self.rl.dynamic_sampling_max_draws > 0;
            let totals: Vec<f64> = rollouts.iter().map(|r| r.scored.total).collect();
            let spread = group_advantages(&totals, group, ScaleRewards::None).zero_std;
            let mut rollouts = rollouts.into_iter();
            for zero_std in spread {
                let members: Vec<Rollout> = rollouts.by_ref().take(group).collect();
                if zero_std && dynamic {
                    flat.push(members);
                } else {
                    kept.push(members);
                }
            }
            if !dynamic
                || kept.len() >= wanted
                || draws as usize > self.rl.dynamic_sampling_max_draws
            {
                break;
            }
        }
        let dropped = flat.len();
        // Past the cap, flat groups fill the batch so every step has the same size.
        kept.extend(flat);
        kept.truncate(wanted);
        let mut rollouts: Vec<Rollout> = kept.into_iter().flatten().collect();
        let totals: Vec<f64> = rollouts.iter().map(|r| r.scored.total).collect();
        let advantages = advantages(
            &totals,
            group,
            self.rl.advantage_estimator,
            self.rl.scale_rewards,
        );
        for (rollout, advantage) in rollouts.iter_mut().zip(&advantages.values) {
            rollout.advantage = *advantage;
        }
        metrics.insert(
            "frac_reward_zero_std".into(),
            advantages.frac_reward_zero_std,
        );
        metrics.insert("nan_rewards".into(), advantages.nan_rewards as f64);
        if self.rl.dynamic_sampling_max_draws > 0 {
            metrics.insert("dynamic_sampling/draws".into(), draws as f64);
            metrics.insert("dynamic_sampling/flat_groups".into(), dropped as f64);
        }
        self.reward_metrics(&rollouts, &mut metrics);
        let started = Instant::now();
        let ref_logprobs = match &self.reference {
            Some(reference) => Some(self.reference_logprobs(reference, &rollouts)?),
            None => None,
        };
        metrics.insert("time/reference".into(), started.elapsed().as_secs_f64());
        Ok(GenerationBatch {
            rollouts,
            ref_logprobs,
            metrics,
        })
    }

    fn reference_logprobs(&self, reference: &Model, rollouts: &[Rollout]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rollouts.len());
        for chunk in rollouts.chunks(self.micro_batch) {
            let (logprobs, _) = tch::no_grad(|| self.forward(reference, chunk))?;
            for (row, rollout) in chunk.iter().enumerate() {
                let n = rollout.completion.token_ids.len() as i64;
                let values: Vec<f32> = Vec::try_from(logprobs.get(row as i64).narrow(0, 0, n))?;
                out.push(values);
            }
        }
        Ok(out)
    }

    fn forward(&self, model: &Model, rollouts: &[Rollout]) -> Result<(Tensor, Tensor)> {
        let prompts: Vec<&[i64]> = rollouts
            .iter()
            .map(|r| self.prompts[r.prompt].ids.as_slice())
            .collect();
        let completions: Vec<&[i64]> = rollouts
            .iter()
            .map(|r| r.completion.token_ids.as_slice())
            .collect();
        completion_logprobs(
            &model.transformer,
            &prompts,
            &completions,
            self.rl.temperature,
        )
    }

    fn reward_metrics(&self, rollouts: &[Rollout], metrics: &mut Metrics) {
        let n = rollouts.len().max(1) as f64;
        let stats = |values: Vec<f64>| {
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            (mean, var.sqrt())
        };
        let (mean, std) = stats(rollouts.iter().map(|r| r.scored.total).collect());
        metrics.insert("reward".into(), mean);
        metrics.insert("reward_std".into(), std);
        for (f, name) in self.reward_names.iter().enumerate() {
            let (mean, std) = stats(
                rollouts
                    .iter()
                    .map(|r| r.scored.per_function[f].value)
                    .collect(),
            );
            metrics.insert(format!("rewards/{name}/mean"), mean);
            metrics.insert(format!("rewards/{name}/std"), std);
        }
        // The task's first reward is its correctness check.
        let solved = rollouts
            .iter()
            .filter(|r| {
                r.scored
                    .per_function
                    .first()
                    .is_some_and(|s| s.value >= 1.0)
            })
            .count();
        metrics.insert("accuracy".into(), solved as f64 / n);
        let infra = rollouts
            .iter()
            .flat_map(|r| &r.scored.per_function)
            .filter(|s| s.infra_error.is_some())
            .count();
        metrics.insert("reward_infra_errors".into(), infra as f64);
        let lengths: Vec<usize> = rollouts
            .iter()
            .map(|r| r.completion.token_ids.len())
            .collect();
        metrics.insert(
            "completions/mean_length".into(),
            lengths.iter().sum::<usize>() as f64 / n,
        );
        metrics.insert(
            "completions/max_length".into(),
            lengths.iter().copied().max().unwrap_or(0) as f64,
        );
        let truncated = rollouts
            .iter()
            .filter(|r| r.completion.finish_reason == FinishReason::Length)
            .count();
        metrics.insert("completions/clipped_ratio".into(), truncated as f64 / n);
    }

    fn log_samples(&self, run: &RunDir, step: usize, batch: &GenerationBatch) -> Result<()> {
        let rows: Vec<Value> = batch
            .rollouts
            .iter()
            .map(|r| {
                let rewards: serde_json::Map<String, Value> = self
                    .reward_names
                    .iter()
                    .zip(&r.scored.per_function)
                    .map(|(name, s)| (name.clone(), json!({"value": s.value, "reason": s.reason})))
                    .collect();
                json!({
                    "step": step,
                    "prompt": self.prompts[r.prompt].text,
                    "completion": r.text,
                    "reward": r.scored.total,
                    "rewards": rewards,
                    "advantage": r.advantage,
                    "tokens": r.completion.token_ids.len(),
                    "finish_reason": r.completion.finish_reason,
                })
            })
            .collect();
        run.log_samples(&rows)
    }
}

impl Objective for Grpo {
    fn accumulate(&mut self, model: &Model, step: usize, run: &RunDir) -> Result<Metrics> {
        let iteration = step % self.rl.num_iterations;
        if iteration == 0 || self.batch.is_none() {
            let batch = self.generate_batch(model, step)?;
            if self.sample_log_steps > 0 && step.is_multiple_of(self.sample_log_steps) {
                self.log_samples(run, step + 1, &batch)?;
            }
            self.batch = Some(batch);
        }
        let started = Instant::now();
        let batch = self.batch.as_ref().context("no generation batch")?;
        let config = self.loss_config();
        let device = model.vs.device();
        let token_mask = |rollouts: &[Rollout]| -> Vec<usize> {
            rollouts
                .iter()
                .map(|r| {
                    let truncated = r.completion.finish_reason == FinishReason::Length;
                    if truncated && self.rl.mask_truncated_completions {
                        0
                    } else {
                        r.completion.token_ids.len()
                    }
                })
                .collect()
        };
        let lengths = token_mask(&batch.rollouts);
        let share = BatchShare {
            micro_batches: batch.rollouts.len().div_ceil(self.micro_batch),
            batch_tokens: lengths.iter().sum::<usize>() as f64,
        };
        let (mut loss_sum, mut entropy_sum) = (0.0, 0.0);
        let mut stats = LossStats::default();
        for (chunk_index, chunk) in batch.rollouts.chunks(self.micro_batch).enumerate() {
            let first = chunk_index * self.micro_batch;
            let (logprobs, entropy) = self.forward(model, chunk)?;
            let width = logprobs.size()[1] as usize;
            let mask = length_mask(&lengths[first..first + chunk.len()], width, device);
            let old = if self.rl.num_iterations > 1 {
                let rows: Vec<&[f32]> = chunk
                    .iter()
                    .map(|r| r.completion.logprobs.as_slice())
                    .collect();
                padded_floats(&rows, width, device)
            } else {
                logprobs.detach()
            };
            let reference = batch.ref_logprobs.as_ref().map(|all| {
                let rows: Vec<&[f32]> = all[first..first + chunk.len()]
                    .iter()
                    .map(Vec::as_slice)
                    .collect();
                padded_floats(&rows, width, device)
            });
            let advantages: Vec<f32> = chunk.iter().map(|r| r.advantage as f32).collect();
            let advantages = Tensor::from_slice(&advantages).to_device(device);
            let (loss, chunk_stats) = policy_loss(
                &logprobs,
                &old,
                reference.as_ref(),
                &advantages,
                &mask,
                &config,
                share,
            );
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                bail!(
                    "step {}: the policy loss is {value} (micro-batch {chunk_index})",
                    step + 1
                );
            }
            loss.backward();
            loss_sum += value;
            entropy_sum += (entropy * &mask).sum(Kind::Double).double_value(&[]);
            stats.add(&chunk_stats);
        }
        let mut metrics = if iteration == 0 {
            batch.metrics.clone()
        } else {
            // A reused batch: the same rewards, no new sampling time.
            batch
                .metrics
                .iter()
                .filter(|(k, _)| !k.starts_with("time/"))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        let tokens = stats.tokens.max(1.0);
        metrics.insert("loss".into(), loss_sum);
        metrics.insert("entropy".into(), entropy_sum / tokens);
        if self.rl.beta > 0.0 {
            metrics.insert("kl".into(), stats.kl_sum / tokens);
        }
        metrics.insert("clip_ratio/low_mean".into(), stats.clipped_low / tokens);
        metrics.insert("clip_ratio/high_mean".into(), stats.clipped_high / tokens);
        metrics.insert(
            "clip_ratio/region_mean".into(),
            (stats.clipped_low + stats.clipped_high) / tokens,
        );
        metrics.insert("time/update".into(), started.elapsed().as_secs_f64());
        Ok(metrics)
    }

    fn state(&self) -> Value {
        json!({ "prompt_cursor": self.cursor })
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        self.cursor = state
            .get("prompt_cursor")
            .and_then(Value::as_u64)
            .context("trainer_state.json: objective.prompt_cursor is missing")?
            as usize;
        self.batch = None;
        Ok(())
    }
}

/// The frozen KL reference: `model.reference`, or the policy's starting weights.
fn reference_model(config: &RunConfig, policy: &Model) -> Result<Model> {
    let path: PathBuf = match (&config.model.reference, &config.model.path) {
        (Some(reference), _) => reference.clone(),
        (None, Some(path)) => path.clone(),
        (None, None) => bail!(
            "rl.beta > 0 needs a reference model: set model.reference (a new model has no \
             starting weights on disk)"
        ),
    };
    let reference = Model::load(&path, policy.vs.device(), config.model.dtype)
        .with_context(|| format!("model.reference: cannot load {}", path.display()))?;
    if reference.config().vocab_size != policy.config().vocab_size {
        bail!(
            "model.reference {}: vocab_size {} differs from the policy's {}",
            path.display(),
            reference.config().vocab_size,
            policy.config().vocab_size
        );
    }
    for mut variable in reference.vs.trainable_variables() {
        let _ = variable.requires_grad_(false);
    }
    Ok(reference)
}

pub fn run(config: &RunConfig, options: super::StartOptions) -> Result<PathBuf> {
    if config
        .rl
        .as_ref()
        .is_some_and(|rl| rl.algorithm == Algorithm::Ppo)
    {
        bail!(
            "rl.algorithm: ppo is not implemented yet; use grpo (with rl.advantage_estimator \
             grpo, rloo, reinforce_pp or reinforce_pp_baseline)"
        );
    }
    let (model, tokenizer_path) = super::initial_model(config)?;
    let mut objective = Grpo::new(config, &tokenizer_path, &model)?;
    super::train(
        config,
        "grpo",
        model,
        &tokenizer_path,
        &mut objective,
        options,
    )
}
