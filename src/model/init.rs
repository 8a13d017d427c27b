//! New weights from a seed, in plain Rust.
//!
//! libtorch's global generator is shared by every thread of the process: a test (or a
//! library) that reseeds it or draws from it between our seed and our init would change
//! our weights. So every new variable is filled here from a Rust RNG of its own, seeded
//! from the run's seed and the variable's name: the result depends only on (config,
//! seed), and adding a head later (PPO's value head) leaves every other weight as it was.
//!
//! The values follow transformers' `_init_weights` for Llama / Qwen2 / Qwen3: linear and
//! embedding weights from N(0, initializer_range²), biases zero, RMSNorm scales one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tch::{Tensor, nn};

/// transformers' default `initializer_range` for Llama and Qwen2.
pub const DEFAULT_STD: f64 = 0.02;

/// How one variable starts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    Zeros,
    Ones,
    Normal(f64),
}

/// Fills the variables of `vs` whose names `wanted` accepts, in sorted name order.
/// Runs under no_grad: the fill is not part of any graph.
pub fn fill(vs: &nn::VarStore, seed: u64, std: f64, wanted: impl Fn(&str) -> bool) {
    let sorted: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    tch::no_grad(|| {
        for (name, variable) in sorted.iter().filter(|(name, _)| wanted(name)) {
            let values = initial_values(name, variable.size().len(), variable.numel(), seed, std);
            let source = Tensor::from_slice(&values).reshape(variable.size());
            // copy_ converts to the variable's dtype and device.
            variable.shallow_clone().copy_(&source);
        }
    });
}

/// The values of one variable, flattened.
fn initial_values(name: &str, rank: usize, numel: usize, seed: u64, std: f64) -> Vec<f32> {
    match start_of(name, rank, std) {
        Start::Zeros => vec![0.0; numel],
        Start::Ones => vec![1.0; numel],
        Start::Normal(std) => normal(&mut stream(seed, name), numel, std),
    }
}

/// Biases start at zero; the only other one-dimensional weights of these models are
/// RMSNorm scales, which start at one (the identity); matrices are drawn.
fn start_of(name: &str, rank: usize, std: f64) -> Start {
    if name.ends_with(".bias") {
        Start::Zeros
    } else if rank <= 1 {
        Start::Ones
    } else {
        Start::Normal(std)
    }
}

/// A variable's own stream: SHA-256 of the seed and the name, so that two variables
/// never share draws and one variable's draws do not depend on which others exist.
fn stream(seed: u64, name: &str) -> StdRng {
    let mut hasher = Sha256::new();
    hasher.update(b"rlvr init\0");
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    StdRng::from_seed(hasher.finalize().into())
}

/// `count` draws from N(0, std²) by Box–Muller (written out so that the values depend
/// only on the RNG's stream, not on a distribution crate's algorithm).
fn normal(rng: &mut StdRng, count: usize, std: f64) -> Vec<f32> {
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        // 1 - [0, 1) is (0, 1]: the logarithm stays finite.
        let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
        let angle = std::f64::consts::TAU * rng.random::<f64>();
        values.push((std * radius * angle.cos()) as f32);
        values.push((std * radius * angle.sin()) as f32);
    }
    values.truncate(count);
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_the_asked_spread_and_differ_by_name_and_seed() {
        let values = normal(&mut stream(1, "w"), 100_000, 0.02);
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / values.len() as f64;
        assert!(mean.abs() < 5e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "std {}", var.sqrt());
        assert_ne!(values[..8], normal(&mut stream(1, "v"), 8, 0.02)[..]);
        assert_ne!(values[..8], normal(&mut stream(2, "w"), 8, 0.02)[..]);
        assert_eq!(values[..8], normal(&mut stream(1, "w"), 8, 0.02)[..]);
    }

    #[test]
    fn biases_are_zero_and_norm_scales_one() {
        assert_eq!(
            start_of("model.layers.0.self_attn.q_proj.bias", 1, 0.02),
            Start::Zeros
        );
        assert_eq!(start_of("model.norm.weight", 1, 0.02), Start::Ones);
        assert_eq!(start_of("lm_head.weight", 2, 0.02), Start::Normal(0.02));
    }
}
