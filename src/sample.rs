//! Batched generation with the KV cache.
//!
//! Prompts are left-padded into one batch and decoded together; each step samples one
//! token per active row. Rows that finish (a stop token, or a stop string when a
//! decoder is given) are dropped from the batch and the cache, so they stop costing
//! compute. Log-probs are those of the sampling distribution: logits divided by the
//! temperature, before top-k / top-p filtering, as TRL computes them for the loss.

use crate::model::{KvCache, Transformer, position_ids_from_mask};
use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1 disables top-p.
    pub top_p: f64,
    pub stop_token_ids: Vec<i64>,
    pub stop_strings: Vec<String>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token or stop string ended the completion.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated ids, including the stop token when one ended the row.
    pub token_ids: Vec<i64>,
    /// Log-prob of each generated token under the temperature-scaled distribution.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// Turns token ids into text; needed only for stop strings.
pub type Decoder<'a> = &'a dyn Fn(&[i64]) -> String;

/// Generates one completion per prompt.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    decoder: Option<Decoder>,
) -> Result<Vec<Completion>> {
    validate(prompts, params, decoder.is_some())?;
    let device = model.device();
    tch::no_grad(|| decode(model, prompts, params, decoder, device))
}

fn validate(prompts: &[Vec<i64>], params: &SamplingParams, has_decoder: bool) -> Result<()> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {i} is empty: a prompt needs at least one token");
    }
    if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
        bail!(
            "temperature must be a finite number >= 0, got {}",
            params.temperature
        );
    }
    if !(params.top_p > 0.0 && params.top_p <= 1.0) {
        bail!("top_p must lie in (0, 1], got {}", params.top_p);
    }
    if !params.stop_strings.is_empty() && !has_decoder {
        bail!("stop strings need a tokenizer to decode completions");
    }
    Ok(())
}

/// Left-pads prompts: ids [batch, width] and the mask of real tokens.
fn left_pad(prompts: &[Vec<i64>], device: Device) -> (Tensor, Tensor) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut mask = Vec::with_capacity(prompts.len() * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).reshape(shape).to_device(device),
        Tensor::from_slice(&mask).reshape(shape).to_device(device),
    )
}

fn decode(
    model: &Transformer,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    decoder: Option<Decoder>,
    device: Device,
) -> Result<Vec<Completion>> {
    let mut completions: Vec<Completion> = prompts
        .iter()
        .map(|_| Completion {
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
        })
        .collect();
    if params.max_new_tokens == 0 {
        return Ok(completions);
    }
    let (ids, mut key_mask) = left_pad(prompts, device);
    let mut positions = position_ids_from_mask(&key_mask);
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = KvCache::with_capacity(
        model.config.num_hidden_layers,
        width + params.max_new_tokens,
    );
    let mut logits = model
        .forward(&ids, &positions, &key_mask, Some(&mut cache))?
        .select(1, -1);
    // `active[j]` is the prompt index of batch row j.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut next_position = positions.select(1, -1) + 1;
    // Our own seeded generator rather than libtorch's global one, so that a seed gives
    // the same completions whatever else runs in the process.
    let mut rng = StdRng::seed_from_u64(params.seed);

    for step in 0..params.max_new_tokens {
        let (tokens, logprobs) = pick_tokens(&logits.to_kind(Kind::Float), params, &mut rng);
        let tokens_vec: Vec<i64> = Vec::try_from(&tokens)?;
        let logprobs_vec: Vec<f32> = Vec::try_from(&logprobs)?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, &prompt_index) in active.iter().enumerate() {
            let completion = &mut completions[prompt_index];
            completion.token_ids.push(tokens_vec[row]);
            completion.logprobs.push(logprobs_vec[row]);
            if stops(completion, params, decoder) {
                completion.finish_reason = FinishReason::Stop;
            } else {
                keep.push(row);
            }
        }
        if keep.is_empty() || step + 1 == params.max_new_tokens {
            break;
        }
        let mut tokens = tokens;
        if keep.len() < active.len() {
            let rows = Tensor::from_slice(&keep.iter().map(|&r| r as i64).collect::<Vec<_>>())
                .to_device(device);
            cache.select_rows(&rows);
            key_mask = key_mask.index_select(0, &rows);
            next_position = next_position.index_select(0, &rows);
            tokens = tokens.index_select(0, &rows);
            active = keep.iter().map(|&r| active[r]).collect();
        }
        key_mask = Tensor::cat(&[&key_mask, &key_mask.ones_like().narrow(1, 0, 1)], 1);
        positions = next_position.unsqueeze(1);
        logits = model
            .forward(
                &tokens.unsqueeze(1),
                &positions,
                &key_mask,
                Some(&mut cache),
            )?
            .select(1, -1);
        next_position += 1;
    }
    Ok(completions)
}

fn stops(completion: &Completion, params: &SamplingParams, decoder: Option<Decoder>) -> bool {
    let last = *completion.token_ids.last().unwrap_or(&-1);
    if params.stop_token_ids.contains(&last) {
        return true;
    }
    match decoder {
        Some(decode) if !params.stop_strings.is_empty() => {
            let text = decode(&completion.token_ids);
            params
                .stop_strings
                .iter()
                .any(|s| text.contains(s.as_str()))
        }
        _ => false,
    }
}

/// Samples (or, at temperature 0, takes the argmax of) one token per row of `logits`
/// [rows, vocab]; returns the tokens and their log-probs.
fn pick_tokens(logits: &Tensor, params: &SamplingParams, rng: &mut StdRng) -> (Tensor, Tensor) {
    if params.temperature == 0.0 {
        let tokens = logits.argmax(-1, false);
        let logprobs = logits
            .log_softmax(-1, Kind::Float)
            .gather(1, &tokens.unsqueeze(1), false)
            .squeeze_dim(1);
        return (tokens, logprobs);
    }
    let scaled = logits / params.temperature;
    let logprobs_all = scaled.log_softmax(-1, Kind::Float);
    let filtered = filter_top_k_top_p(&scaled, params.top_k, params.top_p);
    let tokens = draw(&filtered.softmax(-1, Kind::Double), rng);
    let logprobs = logprobs_all
        .gather(1, &tokens.unsqueeze(1), false)
        .squeeze_dim(1);
    (tokens, logprobs)
}

/// Inverse-CDF sampling of one token per row of `probs` [rows, vocab]: the first
/// token whose cumulative probability exceeds a uniform draw scaled by the row's total
/// (so rounding can never select a token of probability zero).
fn draw(probs: &Tensor, rng: &mut StdRng) -> Tensor {
    let rows = probs.size()[0];
    let uniforms: Vec<f64> = (0..rows).map(|_| rng.random::<f64>()).collect();
    let cumulative = probs.cumsum(-1, Kind::Double);
    let total = cumulative.narrow(1, cumulative.size()[1] - 1, 1);
    let targets = Tensor::from_slice(&uniforms)
        .to_device(probs.device())
        .unsqueeze(1)
        * total;
    cumulative
        .le_tensor(&targets)
        .sum_dim_intlist(1, false, Kind::Int64)
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

    #[test]
    fn draws_follow_the_distribution_and_skip_zero_probability() {
        let probs = Tensor::from_slice(&[0.0f64, 0.25, 0.0, 0.75, 0.0])
            .unsqueeze(0)
            .repeat([4000, 1]);
        let mut rng = StdRng::seed_from_u64(0);
        let tokens = Vec::<i64>::try_from(draw(&probs, &mut rng)).unwrap();
        assert!(
            tokens.iter().all(|&t| t == 1 || t == 3),
            "drew a zero-probability token"
        );
        let share = tokens.iter().filter(|&&t| t == 3).count() as f64 / tokens.len() as f64;
        assert!((share - 0.75).abs() < 0.03, "share of token 3: {share}");
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
