//! PPO with a value head on the policy (`algorithm: ppo`), in the manner of TRL's
//! PPOTrainer: each rollout batch gets per-token rewards (−kl_coef × the k1 KL to the
//! frozen reference, plus the task's score on the last token), values from the head,
//! GAE(γ, λ) advantages (whitened) and returns; then `num_ppo_epochs` passes of
//! `num_mini_batches` updates with the clipped surrogate and the clipped value loss.
//! With `kl_target`, the KL coefficient adapts after each batch (Ziegler et al., 2019).

use super::Objective;
use super::batch::{CompletionForward, completion_hidden, length_mask, padded_floats, step_seed};
use super::loss::clipped_surrogate;
use super::rollout::{Rollout, RolloutSource, batch_metrics, completion_rows};
use crate::config::RunConfig;
use crate::config::run::{Critic, PpoSection};
use crate::model::Model;
use crate::run::{Metrics, RunDir};
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// GAE advantages and returns for one sequence: δ_t = r_t + γ·V_{t+1} − V_t (V after
/// the last token is 0), A_t = δ_t + γλ·A_{t+1}, returns R_t = A_t + V_t.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_advantage = 0.0;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lam * next_advantage;
        advantages[t] = next_advantage;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// ½ · masked mean of max((V − R)², (clip(V, V_old ± ε) − R)²), and the share of tokens
/// where the clipped term was the larger.
pub fn clipped_value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> (Tensor, f64) {
    let clipped = old_values + (values - old_values).clamp(-clip, clip);
    let unclipped_loss = (values - returns).square();
    let clipped_loss = (&clipped - returns).square();
    let tokens = mask.sum(Kind::Float).clamp_min(1.0);
    let loss = (unclipped_loss.maximum(&clipped_loss) * mask).sum(Kind::Float) / &tokens * 0.5;
    let fraction = (clipped_loss.gt_tensor(&unclipped_loss).to_kind(Kind::Float) * mask)
        .sum(Kind::Float)
        .double_value(&[])
        / tokens.double_value(&[]);
    (loss, fraction)
}

/// Per-token values of each rollout, row by row.
type Rows = Vec<Vec<f32>>;

/// One rollout batch, ready for its updates.
struct PpoBatch {
    rollouts: Vec<Rollout>,
    old_logprobs: Vec<Vec<f32>>,
    old_values: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
    metrics: Metrics,
}

pub struct Ppo {
    source: RolloutSource,
    ppo: PpoSection,
    seed: u64,
    kl_coef: f64,
    batch: Option<PpoBatch>,
}

impl Ppo {
    pub fn new(config: &RunConfig, tokenizer_path: &Path, policy: &Model) -> Result<Self> {
        let source = RolloutSource::new(config, tokenizer_path, policy, true)?;
        let ppo = source.rl.ppo.clone();
        Ok(Self {
            kl_coef: ppo.kl_coef,
            ppo,
            seed: config.seed,
            source,
            batch: None,
        })
    }

    /// Log-probs and values of `rollouts` under `model`, per row, without gradient.
    fn logprobs_and_values(&self, model: &Model, rollouts: &[Rollout]) -> Result<(Rows, Rows)> {
        let (mut logprobs, mut values) = (Vec::new(), Vec::new());
        for range in self.source.micro_batches(rollouts) {
            let chunk = &rollouts[range];
            let (lp, v) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
                let forward = self.source.forward(model, chunk)?;
                let v = values_of(model, &self.source, &forward, chunk)?;
                Ok((forward.logprobs, v))
            })?;
            logprobs.extend(completion_rows(&lp, chunk)?);
            values.extend(completion_rows(&v, chunk)?);
        }
        Ok((logprobs, values))
    }

    /// The graded rollouts and the ungraded ones; an error (after logging the samples)
    /// when too many could not be graded, or none could.
    fn split_graded(
        &self,
        rollouts: Vec<Rollout>,
        (run, step): (&RunDir, usize),
    ) -> Result<(Vec<Rollout>, Vec<Rollout>)> {
        let checked = match self.source.check_ungraded(step, &rollouts) {
            Ok(()) if rollouts.iter().any(|r| r.scored.graded()) => Ok(()),
            Ok(()) => Err(anyhow::anyhow!(
                "step {}: no completion could be graded",
                step + 1
            )),
            Err(error) => Err(error),
        };
        if let Err(error) = checked {
            self.source.log_samples(run, step, &rollouts)?;
            return Err(error);
        }
        Ok(rollouts.into_iter().partition(|r| r.scored.graded()))
    }

    /// A rollout's per-token rewards, −kl_coef × the token's KL (k1) with the task's score
    /// added on the last token, and the sums of its KL and of its KL rewards.
    fn token_rewards(
        &self,
        rollout: &Rollout,
        old: &[f32],
        reference: &[f32],
    ) -> (f64, f64, Vec<f64>) {
        let kl: Vec<f64> = old
            .iter()
            .zip(reference)
            .map(|(o, r)| f64::from(o - r))
            .collect();
        let mut rewards: Vec<f64> = kl.iter().map(|k| -self.kl_coef * k).collect();
        let non_score = rewards.iter().sum::<f64>();
        if let Some(last) = rewards.last_mut() {
            *last += rollout.scored.total;
        }
        (kl.iter().sum(), non_score, rewards)
    }

    /// Samples and scores a batch, logs it (as step `log.1`), and prepares the update.
    /// Completions that could not be graded are left out: their return is unknown.
    fn rollout_batch(
        &mut self,
        model: &Model,
        step: usize,
        log: (&RunDir, usize),
    ) -> Result<PpoBatch> {
        let mut metrics = Metrics::new();
        let rollouts = self.source.draw(model, step, 0, &mut metrics)?;
        self.source.reward_metrics(&rollouts, &mut metrics);
        let (rollouts, ungraded) = self.split_graded(rollouts, log)?;
        let started = Instant::now();
        let reference = self
            .source
            .reference
            .as_ref()
            .context("PPO needs the reference model")?;
        let ref_logprobs = self.source.reference_logprobs(reference, &rollouts)?;
        let (old_logprobs, old_values) = self.logprobs_and_values(model, &rollouts)?;
        metrics.insert("time/reference".into(), started.elapsed().as_secs_f64());

        let (mut advantages, mut returns) = (Vec::new(), Vec::new());
        let (mut kl_total, mut non_score_total) = (0.0, 0.0);
        for (i, rollout) in rollouts.iter().enumerate() {
            let (kl, non_score, rewards) =
                self.token_rewards(rollout, &old_logprobs[i], &ref_logprobs[i]);
            non_score_total += non_score;
            kl_total += kl;
            let values: Vec<f64> = old_values[i].iter().map(|&v| f64::from(v)).collect();
            let (a, r) = gae(&rewards, &values, self.ppo.gamma, self.ppo.lam);
            advantages.push(a);
            returns.push(r);
        }
        if self.ppo.whiten_advantages {
            whiten(&mut advantages);
        }
        let mut rollouts = rollouts;
        for (rollout, a) in rollouts.iter_mut().zip(&advantages) {
            rollout.advantage = a.first().copied().unwrap_or(0.0);
        }
        let n = rollouts.len().max(1) as f64;
        let kl_mean = kl_total / n;
        metrics.insert("kl".into(), kl_mean);
        metrics.insert("non_score_reward".into(), non_score_total / n);
        metrics.insert("kl_coef".into(), self.kl_coef);
        let value_count = old_values.iter().map(Vec::len).sum::<usize>().max(1) as f64;
        metrics.insert(
            "values/mean".into(),
            old_values
                .iter()
                .flatten()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / value_count,
        );
        // The adaptive controller sets the coefficient for the next batch.
        if let Some(target) = self.ppo.kl_target {
            let error = (kl_mean / target - 1.0).clamp(-0.2, 0.2);
            self.kl_coef *= 1.0 + error * rollouts.len() as f64 / self.ppo.kl_horizon;
        }
        let to_f32 = |rows: Vec<Vec<f64>>| -> Vec<Vec<f32>> {
            rows.into_iter()
                .map(|r| r.into_iter().map(|v| v as f32).collect())
                .collect()
        };
        self.source
            .log_samples(log.0, log.1, rollouts.iter().chain(&ungraded))?;
        Ok(PpoBatch {
            rollouts,
            old_logprobs,
            old_values,
            advantages: to_f32(advantages),
            returns: to_f32(returns),
            metrics,
        })
    }
}

/// Whitens token advantages over the whole batch (mean 0, std 1).
fn whiten(rows: &mut [Vec<f64>]) {
    let n = rows.iter().map(Vec::len).sum::<usize>() as f64;
    if n < 2.0 {
        return;
    }
    let mean = rows.iter().flatten().sum::<f64>() / n;
    let var = rows
        .iter()
        .flatten()
        .map(|v| (v - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    let scale = 1.0 / (var + 1e-8).sqrt();
    for v in rows.iter_mut().flatten() {
        *v = (*v - mean) * scale;
    }
}

/// Values [rows, tokens]: the value head on the separate critic's hidden states when
/// there is one, else on the policy's (`forward`).
fn values_of<'a>(
    model: &Model,
    source: &RolloutSource,
    forward: &CompletionForward,
    rollouts: impl IntoIterator<Item = &'a Rollout>,
) -> Result<Tensor> {
    let Some(critic) = &model.critic else {
        return head_values(model, &forward.hidden);
    };
    let (prompts, completions) = source.sequences(rollouts);
    // The critic keeps its activations: checkpointing covers the policy's layers.
    let (_, hidden, _) = completion_hidden(critic, &prompts, &completions, false)?;
    head_values(model, &hidden)
}

/// The value head over hidden states [rows, tokens, hidden] → [rows, tokens].
fn head_values(model: &Model, hidden: &Tensor) -> Result<Tensor> {
    let head = model
        .value_head
        .as_ref()
        .context("the policy has no value head")?;
    Ok(hidden
        .matmul(&head.tr())
        .squeeze_dim(-1)
        .to_kind(Kind::Float))
}

impl Objective for Ppo {
    fn accumulate(&mut self, model: &Model, step: usize, run: &RunDir) -> Result<Metrics> {
        let updates = self.ppo.updates_per_batch();
        let update = step % updates;
        if update == 0 || self.batch.is_none() {
            let batch = self.rollout_batch(model, step - update, (run, step))?;
            self.batch = Some(batch);
        }
        let started = Instant::now();
        let batch = self.batch.as_ref().context("no rollout batch")?;
        // This update's minibatch: a fresh shuffle of the batch each epoch.
        let (epoch, minibatch) = (
            update / self.ppo.num_mini_batches,
            update % self.ppo.num_mini_batches,
        );
        let mut order: Vec<usize> = (0..batch.rollouts.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(step_seed(
            self.seed,
            step - update,
            1000 + epoch as u64,
        )));
        let size = batch.rollouts.len().div_ceil(self.ppo.num_mini_batches);
        let picks: Vec<usize> = order
            .into_iter()
            .skip(minibatch * size)
            .take(size)
            .collect();
        let tokens: f64 = picks
            .iter()
            .map(|&i| batch.rollouts[i].completion.token_ids.len() as f64)
            .sum();
        let device = model.vs.device();
        let epsilon = (self.source.rl.epsilon, self.source.rl.epsilon_high());
        let (mut pg_sum, mut vf_sum, mut clipped, mut vf_clipped, mut entropy_sum, mut approx_kl) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let picked: Vec<&Rollout> = picks.iter().map(|&i| &batch.rollouts[i]).collect();
        for range in self.source.micro_batches(picked.iter().copied()) {
            let (micro, chunk) = (&picks[range.clone()], &picked[range]);
            let forward = self.source.forward(model, chunk.iter().copied())?;
            let values = values_of(model, &self.source, &forward, chunk.iter().copied())?;
            let width = forward.logprobs.size()[1] as usize;
            let lengths: Vec<usize> = chunk.iter().map(|r| r.completion.token_ids.len()).collect();
            let mask = length_mask(&lengths, width, device);
            let rows = |all: &Vec<Vec<f32>>| -> Tensor {
                let rows: Vec<&[f32]> = micro.iter().map(|&i| all[i].as_slice()).collect();
                padded_floats(&rows, width, device)
            };
            let (old_logprobs, old_values) = (rows(&batch.old_logprobs), rows(&batch.old_values));
            let (advantages, returns) = (rows(&batch.advantages), rows(&batch.returns));

            let (pg, ratio) =
                clipped_surrogate(&forward.logprobs, &old_logprobs, &advantages, epsilon);
            let pg_loss = (&pg * &mask).sum(Kind::Float) / tokens.max(1.0);
            let micro_tokens = mask.sum(Kind::Float).double_value(&[]).max(1.0);
            let (vf_loss, vf_fraction) = clipped_value_loss(
                &values,
                &old_values,
                &returns,
                &mask,
                self.ppo.cliprange_value,
            );
            // The value loss is a token mean per micro-batch; weigh it by its tokens.
            let vf_loss = vf_loss * (micro_tokens / tokens.max(1.0));
            let loss = &pg_loss + &vf_loss * self.ppo.vf_coef;
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                bail!("step {}: the PPO loss is {value}", step + 1);
            }
            forward.backward(&model.transformer, &loss);
            pg_sum += pg_loss.double_value(&[]);
            vf_sum += vf_loss.double_value(&[]);
            vf_clipped += vf_fraction * micro_tokens;
            tch::no_grad(|| {
                let outside = ratio
                    .lt(1.0 - epsilon.0)
                    .logical_or(&ratio.gt(1.0 + epsilon.1));
                clipped += (outside.to_kind(Kind::Float) * &mask)
                    .sum(Kind::Double)
                    .double_value(&[]);
                let log_ratio = &forward.logprobs - &old_logprobs;
                approx_kl += ((log_ratio.square() * 0.5) * &mask)
                    .sum(Kind::Double)
                    .double_value(&[]);
                entropy_sum += (&forward.entropy * &mask)
                    .sum(Kind::Double)
                    .double_value(&[]);
            });
        }
        let mut metrics = batch_metrics(&batch.metrics, update == 0);
        let tokens = tokens.max(1.0);
        metrics.insert("loss".into(), pg_sum + self.ppo.vf_coef * vf_sum);
        metrics.insert("policy/pg_loss".into(), pg_sum);
        metrics.insert("value/vf_loss".into(), vf_sum);
        metrics.insert("policy/clipfrac".into(), clipped / tokens);
        metrics.insert("value/clipfrac".into(), vf_clipped / tokens);
        metrics.insert("policy/approx_kl".into(), approx_kl / tokens);
        metrics.insert("entropy".into(), entropy_sum / tokens);
        metrics.insert("time/update".into(), started.elapsed().as_secs_f64());
        Ok(metrics)
    }

    fn state(&self) -> Value {
        // The bits too: a JSON float may not parse back to the very same f64.
        let mut state = self.source.state();
        state["kl_coef"] = json!(self.kl_coef);
        state["kl_coef_bits"] = json!(self.kl_coef.to_bits());
        state
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        self.source.restore(state)?;
        self.kl_coef = state
            .get("kl_coef_bits")
            .and_then(Value::as_u64)
            .map(f64::from_bits)
            .context("trainer_state.json: objective.kl_coef_bits is missing")?;
        self.batch = None;
        Ok(())
    }
}

pub fn run(config: &RunConfig, options: super::StartOptions) -> Result<PathBuf> {
    let (mut model, tokenizer_path) = super::initial_model(config)?;
    // A new value head comes from the run's seed, so that a run repeats exactly.
    model.add_value_head(config.seed);
    if config
        .rl
        .as_ref()
        .is_some_and(|rl| rl.ppo.critic == Critic::Separate)
    {
        model.add_critic()?;
    }
    let mut objective = Ppo::new(config, &tokenizer_path, &model)?;
    super::train(
        config,
        "ppo",
        model,
        &tokenizer_path,
        &mut objective,
        options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_matches_a_hand_worked_example() {
        // r = (0, 0, 1), V = (0.5, 0.6, 0.7), γ = 1, λ = 0.95:
        // δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1; δ0 = 0.6 − 0.5 = 0.1;
        // A2 = 0.3, A1 = 0.1 + 0.95·0.3 = 0.385, A0 = 0.1 + 0.95·0.385 = 0.46575.
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 1.0, 0.95);
        for (got, want) in a.iter().zip([0.46575, 0.385, 0.3]) {
            assert!((got - want).abs() < 1e-12, "{a:?}");
        }
        for (got, want) in r.iter().zip([0.96575, 0.985, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        // γ = 0.5, λ = 0: one-step TD errors.
        let (a, _) = gae(&[1.0, 2.0], &[0.0, 4.0], 0.5, 0.0);
        assert_eq!(a, vec![1.0 + 0.5 * 4.0, 2.0 - 4.0]);
    }

    #[test]
    fn value_loss_takes_the_larger_of_clipped_and_unclipped() {
        // Old values 0; returns 1. V = 0.5 (inside the 0.2 clip: clipped 0.2 → loss 0.64
        // beats 0.25), V = 0.1 (inside: both 0.81), V = −0.5 (clipped −0.2: 1.44 < 2.25).
        let values = Tensor::from_slice(&[0.5f32, 0.1, -0.5]).reshape([1, 3]);
        let old = Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu));
        let returns = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
        let mask = Tensor::ones([1, 3], (Kind::Float, tch::Device::Cpu));
        let (loss, fraction) = clipped_value_loss(&values, &old, &returns, &mask, 0.2);
        let expected = 0.5 * (0.64 + 0.81 + 2.25) / 3.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6);
        assert!((fraction - 1.0 / 3.0).abs() < 1e-9);
    }
}
