//! The GRPO/DAPO policy loss on per-token log-probs.
//!
//! Per token: ratio w = exp(logp − logp_old), surrogate −min(w·A, clip(w, 1−ε, 1+ε_high)·A),
//! plus β times the k3 estimate of KL(π‖π_ref): exp(d) − d − 1 with d = logp_ref − logp.
//! `loss_type` says how tokens are averaged, with TRL's meanings:
//! - `grpo`: mean over each sequence's tokens, then over sequences;
//! - `bnpo`: mean over the micro-batch's tokens;
//! - `dr_grpo`: sum over tokens / (sequences · max_completion_length);
//! - `dapo`: sum over tokens / tokens of the whole generation batch.
//!
//! A generation batch is trained in micro-batches whose gradients add up. `grpo` and
//! `dr_grpo` divide by the batch's sequence count and `dapo` by its token count, so
//! they do not depend on how the batch is cut (micro-batches of unequal size
//! included); `bnpo`, a mean per micro-batch by definition, averages its
//! micro-batches' values as TRL does.

use crate::config::run::LossType;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyLossConfig {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    pub beta: f64,
    pub loss_type: LossType,
    pub max_completion_length: usize,
}

/// Where a micro-batch sits in its generation batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchShare {
    pub micro_batches: usize,
    /// Sequences in the whole generation batch.
    pub batch_sequences: usize,
    /// Completion tokens (mask ones) in the whole generation batch.
    pub batch_tokens: f64,
}

/// Masked sums over a micro-batch, for metrics that add across micro-batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    pub tokens: f64,
    pub kl_sum: f64,
    pub clipped_low: f64,
    pub clipped_high: f64,
}

impl LossStats {
    pub fn add(&mut self, other: &Self) {
        self.tokens += other.tokens;
        self.kl_sum += other.kl_sum;
        self.clipped_low += other.clipped_low;
        self.clipped_high += other.clipped_high;
    }
}

/// The micro-batch's loss (a scalar with gradient to `logprobs`) and its statistics.
///
/// Shapes: `logprobs`, `old_logprobs`, `ref_logprobs` and `mask` are [batch, tokens];
/// `advantages` is [batch]. On-policy, pass `logprobs.detach()` as `old_logprobs`.
pub fn policy_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    ref_logprobs: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    config: &PolicyLossConfig,
    share: BatchShare,
) -> (Tensor, LossStats) {
    let advantages = advantages.unsqueeze(1);
    let epsilon = (config.epsilon_low, config.epsilon_high);
    let (mut per_token, ratio) = clipped_surrogate(logprobs, old_logprobs, &advantages, epsilon);
    let mut kl_sum = 0.0;
    if let (Some(reference), true) = (ref_logprobs, config.beta > 0.0) {
        let d = reference - logprobs;
        let kl = d.exp() - &d - 1.0;
        kl_sum = masked_sum(&kl.detach(), mask);
        per_token += kl * config.beta;
    }
    let loss = aggregate(&per_token, mask, config, share);

    let low = ratio
        .lt(1.0 - config.epsilon_low)
        .logical_and(&advantages.lt(0.0));
    let high = ratio
        .gt(1.0 + config.epsilon_high)
        .logical_and(&advantages.gt(0.0));
    let stats = LossStats {
        tokens: mask.sum(Kind::Double).double_value(&[]),
        kl_sum,
        clipped_low: masked_sum(&low.to_kind(Kind::Double), mask),
        clipped_high: masked_sum(&high.to_kind(Kind::Double), mask),
    };
    (loss, stats)
}

/// The clipped surrogate per token, −min(w·A, clip(w, 1−ε_low, 1+ε_high)·A), and the
/// ratio w = exp(logp − logp_old). `advantages` broadcasts against the log-probs: one
/// per sequence [batch, 1] (GRPO) or one per token [batch, tokens] (PPO).
pub fn clipped_surrogate(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    (epsilon_low, epsilon_high): (f64, f64),
) -> (Tensor, Tensor) {
    let ratio = (logprobs - old_logprobs).exp();
    let clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high);
    let surrogate = (&ratio * advantages).minimum(&(&clipped * advantages));
    (-surrogate, ratio)
}

fn masked_sum(values: &Tensor, mask: &Tensor) -> f64 {
    (values.detach() * mask).sum(Kind::Double).double_value(&[])
}

fn aggregate(
    per_token: &Tensor,
    mask: &Tensor,
    config: &PolicyLossConfig,
    share: BatchShare,
) -> Tensor {
    let masked = per_token * mask;
    let micro_batches = share.micro_batches.max(1) as f64;
    let sequences = share.batch_sequences.max(1) as f64;
    match config.loss_type {
        LossType::Grpo => {
            let per_sequence = masked.sum_dim_intlist(-1, false, per_token.kind())
                / mask
                    .sum_dim_intlist(-1, false, per_token.kind())
                    .clamp_min(1.0);
            per_sequence.sum(per_token.kind()) / sequences
        }
        LossType::Bnpo => {
            masked.sum(per_token.kind()) / mask.sum(per_token.kind()).clamp_min(1.0) / micro_batches
        }
        LossType::DrGrpo => {
            masked.sum(per_token.kind()) / (sequences * config.max_completion_length as f64)
        }
        LossType::Dapo => masked.sum(per_token.kind()) / share.batch_tokens.max(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two completions of three tokens; the second has only two real tokens.
    const LOGP: [[f64; 3]; 2] = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.8]];
    const OLD: [[f64; 3]; 2] = [[-1.1, -0.9, -1.9], [-0.3, -0.7, -0.8]];
    const REF: [[f64; 3]; 2] = [[-1.2, -0.4, -2.5], [-0.1, -1.0, -0.9]];
    const MASK: [[f64; 3]; 2] = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]];
    const ADV: [f64; 2] = [0.8, -1.3];

    fn tensor(rows: &[[f64; 3]; 2]) -> Tensor {
        Tensor::from_slice(rows.as_flattened()).reshape([2, 3])
    }

    /// Per-token loss and d(loss)/d(logp) worked out from the formulas, in f64.
    fn by_hand(config: &PolicyLossConfig, old: &[[f64; 3]; 2]) -> ([[f64; 3]; 2], [[f64; 3]; 2]) {
        let mut loss = [[0.0; 3]; 2];
        let mut grad = [[0.0; 3]; 2];
        for b in 0..2 {
            for t in 0..3 {
                let (lp, a) = (LOGP[b][t], ADV[b]);
                let w = (lp - old[b][t]).exp();
                let w_clipped = w.clamp(1.0 - config.epsilon_low, 1.0 + config.epsilon_high);
                let (unclipped, clipped) = (w * a, w_clipped * a);
                // The unclipped branch carries the gradient w·A; the clipped one none,
                // unless w lies inside the clip range (then both equal w·A).
                let inside = w == w_clipped;
                loss[b][t] = -unclipped.min(clipped);
                grad[b][t] = if unclipped <= clipped || inside {
                    -w * a
                } else {
                    0.0
                };
                let d = REF[b][t] - lp;
                loss[b][t] += config.beta * (d.exp() - d - 1.0);
                grad[b][t] += config.beta * (1.0 - d.exp());
            }
        }
        (loss, grad)
    }

    /// Each token's weight in the aggregated loss.
    fn weights(config: &PolicyLossConfig, share: BatchShare) -> [[f64; 3]; 2] {
        let tokens: f64 = MASK.as_flattened().iter().sum();
        let (mb, sequences) = (share.micro_batches as f64, share.batch_sequences as f64);
        let mut w = [[0.0; 3]; 2];
        for b in 0..2 {
            let row: f64 = MASK[b].iter().sum();
            for t in 0..3 {
                w[b][t] = MASK[b][t]
                    * match config.loss_type {
                        LossType::Grpo => 1.0 / row / sequences,
                        LossType::Bnpo => 1.0 / tokens / mb,
                        LossType::DrGrpo => 1.0 / (sequences * config.max_completion_length as f64),
                        LossType::Dapo => 1.0 / share.batch_tokens,
                    };
            }
        }
        w
    }

    fn check(config: PolicyLossConfig, on_policy: bool) {
        let share = BatchShare {
            micro_batches: 2,
            batch_sequences: 5,
            batch_tokens: 11.0,
        };
        let logp = tensor(&LOGP).set_requires_grad(true);
        let old_rows = if on_policy { LOGP } else { OLD };
        let old = if on_policy {
            logp.detach()
        } else {
            tensor(&OLD)
        };
        let reference = tensor(&REF);
        let (loss, stats) = policy_loss(
            &logp,
            &old,
            Some(&reference),
            &Tensor::from_slice(&ADV),
            &tensor(&MASK),
            &config,
            share,
        );
        loss.backward();
        let (per_token, grad) = by_hand(&config, &old_rows);
        let w = weights(&config, share);
        let mut expected_loss = 0.0;
        let got_grad: Vec<f64> = Vec::try_from(logp.grad().reshape([-1])).unwrap();
        for b in 0..2 {
            for t in 0..3 {
                expected_loss += w[b][t] * per_token[b][t];
                let expected = w[b][t] * grad[b][t];
                let got = got_grad[b * 3 + t];
                assert!(
                    (got - expected).abs() < 1e-6,
                    "{config:?} on_policy={on_policy}: grad[{b}][{t}] {got} vs {expected}"
                );
            }
        }
        let got_loss = loss.double_value(&[]);
        assert!(
            (got_loss - expected_loss).abs() < 1e-6,
            "{config:?} on_policy={on_policy}: loss {got_loss} vs {expected_loss}"
        );
        assert_eq!(stats.tokens, 5.0);
    }

    #[test]
    fn loss_and_gradient_match_the_formulas_for_every_loss_type() {
        for loss_type in [
            LossType::Grpo,
            LossType::Bnpo,
            LossType::DrGrpo,
            LossType::Dapo,
        ] {
            for beta in [0.0, 0.04] {
                for on_policy in [true, false] {
                    let config = PolicyLossConfig {
                        epsilon_low: 0.2,
                        epsilon_high: 0.28,
                        beta,
                        loss_type,
                        max_completion_length: 4,
                    };
                    check(config, on_policy);
                }
            }
        }
    }

    #[test]
    fn clip_fractions_count_tokens_that_the_clip_stopped() {
        // Off-policy ratios: row 0 (A>0): e^0.1, e^0.4 (> 1.28, clipped high), e^-0.1;
        // row 1 (A<0): 1, e^-0.5 (< 0.8, clipped low), masked.
        let config = PolicyLossConfig {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
            beta: 0.0,
            loss_type: LossType::Bnpo,
            max_completion_length: 3,
        };
        let share = BatchShare {
            micro_batches: 1,
            batch_sequences: 2,
            batch_tokens: 5.0,
        };
        let logp = tensor(&LOGP);
        let (_, stats) = policy_loss(
            &logp,
            &tensor(&OLD),
            None,
            &Tensor::from_slice(&ADV),
            &tensor(&MASK),
            &config,
            share,
        );
        assert_eq!((stats.clipped_high, stats.clipped_low), (1.0, 1.0));
        assert_eq!(stats.kl_sum, 0.0);
    }
}
