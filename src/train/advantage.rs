//! Group-relative advantages (GRPO): each completion's reward against the other
//! completions of the same prompt.
//!
//! A_i = (r_i − mean_g) / (std_g + 1e-4) with the N−1 std (`scale_rewards: group`), the
//! batch std instead (`batch`), or no scaling (`none`). A group whose rewards do not
//! spread carries no signal: its advantages are exactly 0 and it is counted in
//! `frac_reward_zero_std`. A NaN reward (a broken reward function) gets advantage 0
//! and is left out of its group's statistics, so one bad score cannot poison the group.
//!
//! The other estimators share the GRPO update and differ only here:
//! - `rloo`: r_i minus the mean of the other G−1 rewards of its group (no scaling);
//! - `reinforce_pp` (REINFORCE++): rewards whitened over the whole batch, no group baseline;
//! - `reinforce_pp_baseline`: r_i minus its group mean, whitened over the batch.

use crate::config::run::{AdvantageEstimator, ScaleRewards};

#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    pub values: Vec<f64>,
    /// Per group: true when its rewards have (numerically) no spread.
    pub zero_std: Vec<bool>,
    pub frac_reward_zero_std: f64,
    pub nan_rewards: usize,
}

const STD_FLOOR: f64 = 1e-4;
/// torch.isclose(std, 0)'s absolute tolerance, as TRL tests for zero spread.
const ZERO_STD: f64 = 1e-8;

/// Mean and N−1 standard deviation of the finite values (std NaN below two values).
fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let finite = values.filter(|v| v.is_finite());
    let n = finite.clone().count() as f64;
    if n == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = finite.clone().sum::<f64>() / n;
    let variance = finite.map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, if n < 2.0 { f64::NAN } else { variance.sqrt() })
}

/// Advantages for `rewards` laid out group after group, `group_size` per prompt.
pub fn group_advantages(rewards: &[f64], group_size: usize, scale: ScaleRewards) -> Advantages {
    assert!(
        group_size > 0 && rewards.len().is_multiple_of(group_size),
        "rewards must fill whole groups"
    );
    let batch_std = mean_std(rewards.iter().copied()).1;
    let mut values = Vec::with_capacity(rewards.len());
    let mut zero_std = Vec::new();
    for group in rewards.chunks(group_size) {
        let (mean, std) = mean_std(group.iter().copied());
        // One finite reward (or none) has no spread to learn from.
        let flat = std.is_nan() || std <= ZERO_STD;
        zero_std.push(flat);
        let scale_by = match scale {
            ScaleRewards::Group => std + STD_FLOOR,
            ScaleRewards::Batch => batch_std + STD_FLOOR,
            ScaleRewards::None => 1.0,
        };
        values.extend(group.iter().map(|&r| {
            if flat || !r.is_finite() || !scale_by.is_finite() {
                0.0
            } else {
                (r - mean) / scale_by
            }
        }));
    }
    let groups = zero_std.len().max(1) as f64;
    Advantages {
        frac_reward_zero_std: zero_std.iter().filter(|&&z| z).count() as f64 / groups,
        nan_rewards: rewards.iter().filter(|r| !r.is_finite()).count(),
        values,
        zero_std,
    }
}

/// Advantages by `estimator`; `scale` applies to GRPO only.
pub fn advantages(
    rewards: &[f64],
    group_size: usize,
    estimator: AdvantageEstimator,
    scale: ScaleRewards,
) -> Advantages {
    let grouped = group_advantages(rewards, group_size, ScaleRewards::None);
    let values = match estimator {
        AdvantageEstimator::Grpo => return group_advantages(rewards, group_size, scale),
        AdvantageEstimator::Rloo => {
            // r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean), G counting finite rewards.
            let mut values = Vec::with_capacity(rewards.len());
            for (group, centred) in rewards
                .chunks(group_size)
                .zip(grouped.values.chunks(group_size))
            {
                let n = group.iter().filter(|r| r.is_finite()).count() as f64;
                let factor = if n > 1.0 { n / (n - 1.0) } else { 0.0 };
                values.extend(centred.iter().map(|a| a * factor));
            }
            values
        }
        AdvantageEstimator::ReinforcePp => whiten(rewards),
        AdvantageEstimator::ReinforcePpBaseline => {
            let centred: Vec<f64> = rewards
                .iter()
                .zip(&grouped.values)
                .map(|(r, a)| if r.is_finite() { *a } else { f64::NAN })
                .collect();
            whiten(&centred)
        }
    };
    Advantages { values, ..grouped }
}

/// (v − mean) / (std + 1e-4) over the finite values of the batch; NaN becomes 0.
fn whiten(values: &[f64]) -> Vec<f64> {
    let (mean, std) = mean_std(values.iter().copied());
    values
        .iter()
        .map(|v| {
            let a = (v - mean) / (std + STD_FLOOR);
            if a.is_finite() { a } else { 0.0 }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn group_scaling_uses_the_unbiased_std_plus_floor() {
        // Group [1, 0, 0, 1]: mean 0.5, std (N-1) = sqrt(1/3).
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], 4, ScaleRewards::Group);
        let s = (1.0f64 / 3.0).sqrt() + 1e-4;
        close(&a.values, &[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]);
        assert_eq!(a.frac_reward_zero_std, 0.0);
    }

    #[test]
    fn zero_spread_groups_get_zero_advantage_and_are_counted() {
        let a = group_advantages(&[1.0, 1.0, 0.0, 2.0], 2, ScaleRewards::Group);
        close(&a.values[..2], &[0.0, 0.0]);
        let s = 2f64.sqrt() + 1e-4;
        close(&a.values[2..], &[-1.0 / s, 1.0 / s]);
        assert_eq!(a.zero_std, vec![true, false]);
        assert_eq!(a.frac_reward_zero_std, 0.5);
    }

    #[test]
    fn batch_scaling_centres_per_group_but_divides_by_the_batch_std() {
        let rewards = [0.0, 2.0, 1.0, 1.0];
        let a = group_advantages(&rewards, 2, ScaleRewards::Batch);
        let batch_std = (2.0f64 / 3.0).sqrt() + 1e-4; // mean 1, squares 1+1+0+0 over 3
        close(&a.values, &[-1.0 / batch_std, 1.0 / batch_std, 0.0, 0.0]);
        let n = group_advantages(&rewards, 2, ScaleRewards::None);
        close(&n.values, &[-1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn one_generation_per_prompt_has_no_signal() {
        let a = group_advantages(&[0.3, 0.9], 1, ScaleRewards::Group);
        close(&a.values, &[0.0, 0.0]);
        assert_eq!(a.frac_reward_zero_std, 1.0);
    }

    #[test]
    fn a_nan_reward_is_left_out_of_its_group() {
        let a = group_advantages(&[f64::NAN, 1.0, 0.0], 3, ScaleRewards::None);
        close(&a.values, &[0.0, 0.5, -0.5]);
        assert_eq!(a.nan_rewards, 1);
        // With only one finite reward left the group is flat.
        let b = group_advantages(&[f64::NAN, 1.0], 2, ScaleRewards::Group);
        close(&b.values, &[0.0, 0.0]);
        assert!(b.values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn rloo_subtracts_the_mean_of_the_others() {
        let a = advantages(
            &[1.0, 0.0, 0.0, 3.0, 3.0],
            5,
            AdvantageEstimator::Rloo,
            ScaleRewards::Group,
        );
        // r_0 = 1, others mean (0+0+3+3)/4 = 1.5 → −0.5; r_3 = 3, others (1+0+0+3)/4 = 1 → 2.
        close(&a.values, &[-0.5, -1.75, -1.75, 2.0, 2.0]);
    }

    #[test]
    fn reinforce_pp_whitens_over_the_batch() {
        let rewards = [0.0, 2.0, 1.0, 1.0];
        let std = (2.0f64 / 3.0).sqrt() + 1e-4;
        let plain = advantages(
            &rewards,
            2,
            AdvantageEstimator::ReinforcePp,
            ScaleRewards::Group,
        );
        close(&plain.values, &[-1.0 / std, 1.0 / std, 0.0, 0.0]);
        // With the group baseline: centred (−1, 1, 0, 0), whitened by their std.
        let based = advantages(
            &rewards,
            2,
            AdvantageEstimator::ReinforcePpBaseline,
            ScaleRewards::Group,
        );
        close(&based.values, &[-1.0 / std, 1.0 / std, 0.0, 0.0]);
        let shifted = advantages(
            &[5.0, 7.0, 1.0, 1.0],
            2,
            AdvantageEstimator::ReinforcePpBaseline,
            ScaleRewards::Group,
        );
        close(&shifted.values, &based.values);
        assert_eq!(shifted.frac_reward_zero_std, 0.5);
    }
}
