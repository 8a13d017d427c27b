//! Picking the next token of each row from its logits: greedy, or one inverse-CDF
//! draw from the temperature-scaled distribution after optional top-k / top-p
//! filtering. Log-probs are those of the temperature-scaled distribution before
//! filtering, as TRL computes them for the loss.

use super::SamplingParams;
use super::steps::Logits;
use crate::model::cpu_kernels::KernelSet;
use anyhow::Result;
use tch::{Kind, Tensor};

/// Tokens and their log-probs, one per row of `logits`, with one uniform draw per row.
pub(super) fn pick(
    logits: Logits,
    params: &SamplingParams,
    uniforms: &[f64],
) -> Result<(Vec<i64>, Vec<f32>)> {
    let filtered = params.top_k > 0 || params.top_p < 1.0;
    let logits = match logits {
        Logits::Rows(values, kernels) if !filtered => {
            return Ok(pick_in_rows(&values, kernels, params, uniforms));
        }
        Logits::Rows(values, _) => Tensor::from_slice(&values).reshape([uniforms.len() as i64, -1]),
        Logits::Tensor(tensor) => tensor,
    };
    let (tokens, logprobs) = pick_tokens(&logits.to_kind(Kind::Float), params, uniforms);
    Ok((Vec::try_from(&tokens)?, Vec::try_from(&logprobs)?))
}

/// [`pick_tokens`] without top-k / top-p, on floats: a decode step of a small model
/// is short enough that the dozen libtorch kernels of a pick would cost a tenth of it.
/// `kernels` is the set of the decoder that produced the rows.
fn pick_in_rows(
    logits: &[f32],
    kernels: KernelSet,
    params: &SamplingParams,
    uniforms: &[f64],
) -> (Vec<i64>, Vec<f32>) {
    let vocab = logits.len() / uniforms.len();
    let greedy = params.temperature == 0.0;
    let temperature = if greedy {
        1.0
    } else {
        params.temperature as f32
    };
    let mut tokens = Vec::with_capacity(uniforms.len());
    let mut logprobs = Vec::with_capacity(uniforms.len());
    let mut weights = vec![0.0f32; vocab];
    for (row, &uniform) in logits.chunks_exact(vocab).zip(uniforms) {
        weights.copy_from_slice(row);
        let (largest, total) = kernels.exp_from_max(&mut weights, 1.0 / temperature);
        let max = largest / temperature;
        let token = if greedy {
            // The first of equal maxima, as libtorch's argmax.
            row.iter().position(|&x| x == largest).unwrap_or(0)
        } else {
            draw_in_row(&weights, (uniform * total as f64) as f32)
        };
        tokens.push(token as i64);
        logprobs.push(row[token] / temperature - max - total.ln());
    }
    (tokens, logprobs)
}

/// The first token whose cumulative weight exceeds `target`; a target that rounds up
/// to the total takes the last token with weight, never one of weight zero.
fn draw_in_row(weights: &[f32], target: f32) -> usize {
    let mut cumulative = 0.0f32;
    let mut last_with_weight = 0;
    for (token, &weight) in weights.iter().enumerate() {
        cumulative += weight;
        if weight > 0.0 {
            last_with_weight = token;
        }
        if cumulative > target {
            return token;
        }
    }
    last_with_weight
}

/// Samples (or, at temperature 0, takes the argmax of) one token per row of `logits`
/// [rows, vocab] with one uniform draw per row; returns the tokens and their log-probs.
fn pick_tokens(logits: &Tensor, params: &SamplingParams, uniforms: &[f64]) -> (Tensor, Tensor) {
    let scaled = if params.temperature == 0.0 || params.temperature == 1.0 {
        logits.shallow_clone()
    } else {
        logits / params.temperature
    };
    let logprobs_all = scaled.log_softmax(-1, Kind::Float);
    let tokens = if params.temperature == 0.0 {
        logits.argmax(-1, false)
    } else if params.top_k == 0 && params.top_p == 1.0 {
        draw(&logprobs_all.exp(), uniforms)
    } else {
        let filtered = filter_top_k_top_p(&scaled, params.top_k, params.top_p);
        draw(&filtered.softmax(-1, Kind::Float), uniforms)
    };
    let logprobs = logprobs_all
        .gather(1, &tokens.unsqueeze(1), false)
        .squeeze_dim(1);
    (tokens, logprobs)
}

/// Inverse-CDF sampling of one token per row of `probs` [rows, vocab]: the first
/// token whose cumulative probability exceeds the row's uniform draw scaled by the
/// row's total, so rounding can never select a token of probability zero.
fn draw(probs: &Tensor, uniforms: &[f64]) -> Tensor {
    let cumulative = probs.cumsum(-1, Kind::Float);
    let total = cumulative.narrow(1, cumulative.size()[1] - 1, 1);
    let targets = Tensor::from_slice(uniforms)
        .to_kind(Kind::Float)
        .to_device(probs.device())
        .unsqueeze(1)
        * &total;
    let drawn = cumulative
        .le_tensor(&targets)
        .sum_dim_intlist(1, false, Kind::Int64);
    // A draw that rounds up to the total would count every token; the last token
    // that raises the cumulative sum is the last one with probability.
    let last_with_probability = cumulative
        .lt_tensor(&total)
        .sum_dim_intlist(1, false, Kind::Int64);
    drawn.minimum(&last_with_probability)
}

/// Sets to -inf every logit outside the top k and outside the smallest set whose
/// probability reaches top_p (the most likely token always survives).
fn filter_top_k_top_p(logits: &Tensor, top_k: usize, top_p: f64) -> Tensor {
    let vocab = logits.size()[1];
    let mut logits = logits.shallow_clone();
    if top_k > 0 && (top_k as i64) < vocab {
        let (kth, _) = logits.topk(top_k as i64, -1, true, true);
        let threshold = kth.narrow(1, top_k as i64 - 1, 1);
        logits = logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY);
    }
    if top_p < 1.0 {
        let (sorted, order) = logits.sort(-1, true);
        let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        // Drop a token when the tokens before it already reach top_p.
        let before = &cumulative - sorted.softmax(-1, Kind::Float);
        let drop_sorted = before.ge(top_p);
        let drop = drop_sorted.scatter(1, &order, &drop_sorted);
        logits = logits.masked_fill(&drop, f64::NEG_INFINITY);
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_kernels;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn draws_follow_the_distribution_and_skip_zero_probability() {
        let probs = Tensor::from_slice(&[0.0f32, 0.25, 0.0, 0.75, 0.0])
            .unsqueeze(0)
            .repeat([4000, 1]);
        let mut rng = StdRng::seed_from_u64(0);
        let uniforms: Vec<f64> = (0..4000).map(|_| rng.random()).collect();
        let tokens = Vec::<i64>::try_from(draw(&probs, &uniforms)).unwrap();
        assert!(
            tokens.iter().all(|&t| t == 1 || t == 3),
            "drew a zero-probability token"
        );
        let share = tokens.iter().filter(|&&t| t == 3).count() as f64 / tokens.len() as f64;
        assert!((share - 0.75).abs() < 0.03, "share of token 3: {share}");
    }

    #[test]
    fn rows_in_rust_pick_as_libtorch_does_with_portable_kernels() {
        rows_in_rust_pick_as_libtorch_does(KernelSet::portable());
    }

    #[test]
    fn rows_in_rust_pick_as_libtorch_does_with_avx2_kernels() {
        if let Some(avx2) = cpu_kernels::avx2_under_test() {
            rows_in_rust_pick_as_libtorch_does(avx2);
        }
    }

    fn rows_in_rust_pick_as_libtorch_does(kernels: KernelSet) {
        let values = [0.5f32, 2.0, -1.0, 2.0, 0.1, 1.0, 1.5, -3.0];
        let logits = Tensor::from_slice(&values).reshape([2, 4]);
        for temperature in [0.0, 0.7, 1.0] {
            let params = SamplingParams {
                temperature,
                ..SamplingParams::default()
            };
            for uniforms in [[0.1, 0.9], [0.5, 0.0], [0.999, 0.3]] {
                let (tokens, logprobs) = pick_tokens(&logits, &params, &uniforms);
                let (rust_tokens, rust_logprobs) =
                    pick_in_rows(&values, kernels, &params, &uniforms);
                assert_eq!(Vec::<i64>::try_from(tokens).unwrap(), rust_tokens);
                let logprobs = Vec::<f32>::try_from(logprobs).unwrap();
                for (a, b) in logprobs.iter().zip(&rust_logprobs) {
                    assert!((a - b).abs() < 1e-6, "{}: {a} vs {b}", kernels.name());
                }
            }
        }
        assert_eq!(draw_in_row(&[0.25, 0.75, 0.0], 1.0), 1);
    }

    #[test]
    fn a_draw_at_the_very_top_takes_the_last_token_with_probability() {
        let probs = Tensor::from_slice(&[0.25f32, 0.75, 0.0, 0.0]).unsqueeze(0);
        let tokens = draw(&probs, &[1.0 - f64::EPSILON / 2.0]);
        assert_eq!(Vec::<i64>::try_from(tokens).unwrap(), [1]);
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let logits = Tensor::from_slice(&[1.0f32, 4.0, 3.0, 2.0]).unsqueeze(0);
        let kept = filter_top_k_top_p(&logits, 2, 1.0).isfinite();
        assert_eq!(
            Vec::<bool>::try_from(kept.squeeze()).unwrap(),
            [false, true, true, false]
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_covering_set() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (as logits of their logs).
        let probs = [0.5f32, 0.3, 0.15, 0.05];
        let logits = Tensor::from_slice(&probs.map(f32::ln)).unsqueeze(0);
        let kept = |p| {
            Vec::<bool>::try_from(filter_top_k_top_p(&logits, 0, p).isfinite().squeeze()).unwrap()
        };
        assert_eq!(kept(0.5), [true, false, false, false]);
        assert_eq!(kept(0.79), [true, true, false, false]);
        assert_eq!(kept(0.81), [true, true, true, false]);
        assert_eq!(kept(0.01), [true, false, false, false]);
    }
}
