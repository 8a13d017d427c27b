//! Batched generation with the KV cache.
//!
//! Prompts are left-padded into one batch and decoded together; each step samples one
//! token per active row. Rows that finish (a stop token, or a stop string when a
//! decoder is given) are dropped from the batch and the cache, so they stop costing
//! compute. Log-probs are those of the sampling distribution: logits divided by the
//! temperature, before top-k / top-p filtering, as TRL computes them for the loss.

use crate::model::cpu_decoder::{CpuCache, CpuDecoder};
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
    pub kernels: Kernels,
}

/// What runs the decode steps after the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Plain-Rust steps for f32 models on a CPU (several times faster there), libtorch
    /// otherwise.
    #[default]
    Auto,
    /// Always libtorch's forward.
    Libtorch,
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
            kernels: Kernels::Auto,
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
pub type Decoder<'a> = &'a (dyn Fn(&[i64]) -> String + Sync);

/// Rows each CPU thread gets at least before the batch is split across threads.
const MIN_ROWS_PER_THREAD: usize = 8;

/// Generates one completion per prompt.
///
/// On a CPU with several libtorch threads the batch is split into one shard per
/// thread, each decoded by its own thread with single-threaded kernels. Decode steps
/// are long chains of small kernels that libtorch does not parallelise well, so this
/// runs about twice as fast on two cores. Every row draws from its own random stream
/// (seed, row), so a row's sample does not depend on the shard it lands in.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    decoder: Option<Decoder>,
) -> Result<Vec<Completion>> {
    validate(prompts, params, decoder.is_some())?;
    let threads = tch::get_num_threads().max(1) as usize;
    let shards = if model.device() == Device::Cpu {
        threads.min(prompts.len() / MIN_ROWS_PER_THREAD).max(1)
    } else {
        1
    };
    if shards == 1 {
        return tch::no_grad(|| decode(model, prompts, 0, params, decoder));
    }
    let rows_per_shard = prompts.len().div_ceil(shards);
    let results: Vec<Result<Vec<Completion>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = prompts
            .chunks(rows_per_shard)
            .enumerate()
            .map(|(shard, rows)| {
                let model = model.shallow_clone();
                scope.spawn(move || {
                    tch::set_num_threads(1);
                    let first_row = shard * rows_per_shard;
                    tch::no_grad(|| decode(&model, rows, first_row, params, decoder))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a sampling thread panicked"))
            .collect()
    });
    // Setting a thread's count also sets libtorch's default for new threads.
    tch::set_num_threads(threads as i32);
    let mut completions = Vec::with_capacity(prompts.len());
    for shard in results {
        completions.extend(shard?);
    }
    Ok(completions)
}

/// The random stream of prompt `row` under `seed`.
fn row_rng(seed: u64, row: usize) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(row as u64).to_le_bytes());
    StdRng::from_seed(key)
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

/// Decodes `prompts`, the rows from `first_row` on of the whole batch.
fn decode(
    model: &Transformer,
    prompts: &[Vec<i64>],
    first_row: usize,
    params: &SamplingParams,
    decoder: Option<Decoder>,
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
    let (mut logits, mut steps) = Steps::prefill(model, prompts, params)?;
    // `active[j]` is the prompt index of batch row j.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    // Our own seeded generators rather than libtorch's global one, so that a seed gives
    // the same completions whatever else runs in the process.
    let mut rngs: Vec<StdRng> = (0..prompts.len())
        .map(|row| row_rng(params.seed, first_row + row))
        .collect();

    for step in 0..params.max_new_tokens {
        let uniforms: Vec<f64> = active.iter().map(|&p| rngs[p].random()).collect();
        let (tokens, logprobs) = pick_tokens(&logits.to_kind(Kind::Float), params, &uniforms);
        let tokens: Vec<i64> = Vec::try_from(&tokens)?;
        let logprobs: Vec<f32> = Vec::try_from(&logprobs)?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, &prompt_index) in active.iter().enumerate() {
            let completion = &mut completions[prompt_index];
            completion.token_ids.push(tokens[row]);
            completion.logprobs.push(logprobs[row]);
            if stops(completion, params, decoder) {
                completion.finish_reason = FinishReason::Stop;
            } else {
                keep.push(row);
            }
        }
        if keep.is_empty() || step + 1 == params.max_new_tokens {
            break;
        }
        let kept_tokens: Vec<i64> = keep.iter().map(|&row| tokens[row]).collect();
        logits = steps.next(&active, &keep, &kept_tokens)?;
        active = keep.iter().map(|&row| active[row]).collect();
    }
    Ok(completions)
}

/// The decode steps after the prompt: libtorch's forward with its KV cache, or for
/// f32 models on a CPU the plain-Rust [`CpuDecoder`].
enum Steps<'m> {
    Libtorch {
        model: &'m Transformer,
        cache: KvCache,
        /// Real (1) and padding (0) positions of each batch row.
        key_mask: Tensor,
        /// Position of each batch row's next token.
        positions: Tensor,
    },
    Cpu {
        decoder: Box<CpuDecoder<'m>>,
        cache: CpuCache,
        /// Position of each prompt's next token.
        positions: Vec<usize>,
    },
}

impl<'m> Steps<'m> {
    /// Runs the left-padded prompts through the model; returns the logits of their
    /// last positions and the steps that continue from there.
    fn prefill(
        model: &'m Transformer,
        prompts: &[Vec<i64>],
        params: &SamplingParams,
    ) -> Result<(Tensor, Self)> {
        let device = model.device();
        let (ids, key_mask) = left_pad(prompts, device);
        let positions = position_ids_from_mask(&key_mask);
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = KvCache::with_capacity(
            model.config.num_hidden_layers,
            width + params.max_new_tokens,
        );
        // Only the last position's logits are needed after the prompt.
        let hidden = model.hidden_states(&ids, &positions, &key_mask, Some(&mut cache))?;
        let logits = model.logits(&hidden.select(1, -1));
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let cpu = match params.kernels {
            Kernels::Auto => CpuDecoder::new(model, longest + params.max_new_tokens),
            Kernels::Libtorch => None,
        };
        let steps = match cpu {
            Some(decoder) => {
                let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
                Self::Cpu {
                    cache: decoder.import_cache(&cache, &pad)?,
                    decoder: Box::new(decoder),
                    positions: prompts.iter().map(Vec::len).collect(),
                }
            }
            None => Self::Libtorch {
                model,
                cache,
                positions: positions.select(1, -1) + 1,
                key_mask,
            },
        };
        Ok((logits, steps))
    }

    /// Keeps batch rows `keep` of `active` (prompt indices) and feeds them `tokens`;
    /// returns their next-token logits.
    fn next(&mut self, active: &[usize], keep: &[usize], tokens: &[i64]) -> Result<Tensor> {
        match self {
            Self::Libtorch {
                model,
                cache,
                key_mask,
                positions,
            } => {
                if keep.len() < active.len() {
                    let rows =
                        Tensor::from_slice(&keep.iter().map(|&r| r as i64).collect::<Vec<_>>())
                            .to_device(key_mask.device());
                    cache.select_rows(&rows);
                    *key_mask = key_mask.index_select(0, &rows);
                    *positions = positions.index_select(0, &rows);
                }
                *key_mask = Tensor::cat(&[&*key_mask, &key_mask.ones_like().narrow(1, 0, 1)], 1);
                let ids = Tensor::from_slice(tokens)
                    .to_device(key_mask.device())
                    .unsqueeze(1);
                let logits = model
                    .forward(&ids, &positions.unsqueeze(1), key_mask, Some(cache))?
                    .select(1, -1);
                *positions += 1;
                Ok(logits)
            }
            Self::Cpu {
                decoder,
                cache,
                positions,
            } => {
                let rows: Vec<usize> = keep.iter().map(|&row| active[row]).collect();
                let at: Vec<usize> = rows.iter().map(|&row| positions[row]).collect();
                let logits = decoder.step(cache, &rows, tokens, &at)?;
                rows.iter().for_each(|&row| positions[row] += 1);
                Ok(Tensor::from_slice(&logits).reshape([rows.len() as i64, -1]))
            }
        }
    }
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
