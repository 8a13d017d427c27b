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
use super::batch::{length_mask, padded_floats};
use super::loss::{BatchShare, LossStats, PolicyLossConfig, policy_loss};
use super::rollout::{Rollout, RolloutSource, batch_metrics};
use crate::config::RunConfig;
use crate::config::run::{Algorithm, RlSection, ScaleRewards};
use crate::model::Model;
use crate::run::{Metrics, RunDir};
use crate::sample::FinishReason;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

struct GenerationBatch {
    rollouts: Vec<Rollout>,
    /// Per rollout, the reference model's log-probs (when beta > 0).
    ref_logprobs: Option<Vec<Vec<f32>>>,
    metrics: Metrics,
}

pub struct Grpo {
    source: RolloutSource,
    rl: RlSection,
    batch: Option<GenerationBatch>,
}

impl Grpo {
    pub fn new(config: &RunConfig, tokenizer_path: &Path, policy: &Model) -> Result<Self> {
        let source = RolloutSource::new(
            config,
            tokenizer_path,
            policy,
            config.rl.as_ref().is_some_and(|rl| rl.beta > 0.0),
        )?;
        Ok(Self {
            rl: source.rl.clone(),
            source,
            batch: None,
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

    /// A full generation batch: draws until enough groups have reward spread (DAPO
    /// dynamic sampling, capped by `dynamic_sampling_max_draws`), then advantages.
    fn generate_batch(&mut self, model: &Model, step: usize) -> Result<GenerationBatch> {
        let group = self.rl.num_generations;
        let wanted = self.rl.prompts_per_step;
        let mut metrics = Metrics::new();
        let (mut kept, mut flat) = (Vec::new(), Vec::new());
        let mut draws = 0;
        loop {
            let rollouts = self.source.draw(model, step, draws, &mut metrics)?;
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
        self.source.reward_metrics(&rollouts, &mut metrics);
        let started = Instant::now();
        let ref_logprobs = match &self.source.reference {
            Some(reference) => Some(self.source.reference_logprobs(reference, &rollouts)?),
            None => None,
        };
        metrics.insert("time/reference".into(), started.elapsed().as_secs_f64());
        Ok(GenerationBatch {
            rollouts,
            ref_logprobs,
            metrics,
        })
    }
    /// Tokens each completion puts in the loss (none when cut off and masked).
    fn loss_lengths(&self, rollouts: &[Rollout]) -> Vec<usize> {
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
    }

    /// The forward and backward pass of one micro-batch (`chunk`, rollouts `first..` of
    /// the batch); returns its loss, its summed token entropy and its statistics.
    fn micro_batch_update(
        &self,
        model: &Model,
        batch: &GenerationBatch,
        first: usize,
        chunk: &[Rollout],
        lengths: &[usize],
        share: BatchShare,
    ) -> Result<(f64, f64, LossStats)> {
        let config = self.loss_config();
        let device = model.vs.device();
        let forward = self.source.forward(model, chunk)?;
        let (logprobs, entropy) = (&forward.logprobs, &forward.entropy);
        let width = logprobs.size()[1] as usize;
        let mask = length_mask(lengths, width, device);
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
            logprobs,
            &old,
            reference.as_ref(),
            &advantages,
            &mask,
            &config,
            share,
        );
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            bail!("the policy loss is {value}");
        }
        forward.backward(&model.transformer, &loss);
        let entropy = (entropy * &mask).sum(Kind::Double).double_value(&[]);
        Ok((value, entropy, chunk_stats))
    }
}

impl Objective for Grpo {
    fn accumulate(&mut self, model: &Model, step: usize, run: &RunDir) -> Result<Metrics> {
        let iteration = step % self.rl.num_iterations;
        if iteration == 0 || self.batch.is_none() {
            let batch = self.generate_batch(model, step)?;
            self.source.log_samples(run, step, &batch.rollouts)?;
            self.source.check_ungraded(step, &batch.rollouts)?;
            self.batch = Some(batch);
        }
        let started = Instant::now();
        let batch = self.batch.as_ref().context("no generation batch")?;
        let lengths = self.loss_lengths(&batch.rollouts);
        let ranges = self.source.micro_batches(&batch.rollouts);
        let share = BatchShare {
            micro_batches: ranges.len(),
            batch_sequences: batch.rollouts.len(),
            batch_tokens: lengths.iter().sum::<usize>() as f64,
        };
        let (mut loss_sum, mut entropy_sum) = (0.0, 0.0);
        let mut stats = LossStats::default();
        for (chunk_index, range) in ranges.into_iter().enumerate() {
            let (first, chunk) = (range.start, &batch.rollouts[range.clone()]);
            let lengths = &lengths[range];
            let (loss, entropy, chunk_stats) = self
                .micro_batch_update(model, batch, first, chunk, lengths, share)
                .with_context(|| format!("step {} micro-batch {chunk_index}", step + 1))?;
            loss_sum += loss;
            entropy_sum += entropy;
            stats.add(&chunk_stats);
        }
        let mut metrics = batch_metrics(&batch.metrics, iteration == 0);
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
        metrics.insert("micro_batches".into(), share.micro_batches as f64);
        metrics.insert("time/update".into(), started.elapsed().as_secs_f64());
        Ok(metrics)
    }

    fn state(&self) -> Value {
        self.source.state()
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        self.source.restore(state)?;
        self.batch = None;
        Ok(())
    }
}

/// GRPO (and its RLOO / REINFORCE++ estimators); [`super::rl`] picks the algorithm.
pub fn run(config: &RunConfig, options: super::StartOptions) -> Result<PathBuf> {
    if config
        .rl
        .as_ref()
        .is_some_and(|rl| rl.algorithm == Algorithm::Ppo)
    {
        bail!("rl.algorithm is ppo: run it with train::rl (rlvr rl), not GRPO");
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
