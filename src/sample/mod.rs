//! Batched generation with the KV cache.
//!
//! Prompts are left-padded into one batch and decoded together; each step samples one
//! token per active row. Rows that finish (a stop token, or a stop string when a
//! decoder is given) are dropped from the batch and the cache, so they stop costing
//! compute. Log-probs are those of the sampling distribution: logits divided by the
//! temperature, before top-k / top-p filtering, as TRL computes them for the loss.

mod pick;
mod steps;

use crate::model::cpu_decoder::{CpuDecoder, PACK_UP_TO_BYTES, weight_bytes};
use crate::model::cpu_kernels::KernelSet;
use crate::model::{ModelConfig, Transformer};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use steps::{CpuSteps, DecodeSteps, LibtorchSteps, Logits, Prefill};

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

/// What runs the forward passes of sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The plain-Rust decoder with AVX2/FMA kernels for f32 models on a CPU that has
    /// them (several times faster there), libtorch otherwise.
    #[default]
    Auto,
    /// The plain-Rust decoder with its portable kernels, on any CPU; an error for a
    /// model that is not f32 on the CPU. It keeps the decoder tested where AVX2 is
    /// missing.
    Portable,
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

impl Completion {
    fn empty() -> Self {
        Self {
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
        }
    }
}

/// What ends a completion: the model's end-of-sequence ids and the token that closes an
/// assistant turn in the tokenizer's chat format.
pub fn stop_token_ids(config: &ModelConfig, tokenizer: &Tokenizer) -> Vec<i64> {
    let mut ids = config.eos_token_ids();
    ids.extend(tokenizer.end_of_turn_id());
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Turns token ids into text; needed only for stop strings.
pub type Decoder<'a> = &'a (dyn Fn(&[i64]) -> String + Sync);

/// Rows each CPU thread gets at least before the batch is split across threads.
const MIN_ROWS_PER_THREAD: usize = 8;

/// Generates one completion per prompt.
///
/// For an f32 model on a CPU, prompts and decode steps run in plain Rust
/// ([`CpuDecoder`]; [`Kernels`] says with which kernels, and when), the batch split
/// into one shard per libtorch thread, each run by its own thread from prompt to last
/// token: a decode step is a long chain of small operations that one thread runs best.
/// Every row draws from its own random stream (seed, row), so a row's sample does not
/// depend on the shard it lands in. Other models run the left-padded prompts in one
/// batch and decode with libtorch's forward and KV cache.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    decoder: Option<Decoder>,
) -> Result<Vec<Completion>> {
    validate(prompts, params, decoder.is_some())?;
    if params.max_new_tokens == 0 {
        return Ok(prompts.iter().map(|_| Completion::empty()).collect());
    }
    tch::no_grad(|| {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let threads = tch::get_num_threads().max(1) as usize;
        // A large model's weights do not stay in cache between steps: one decoder for
        // all rows, its products split over the threads, reads each weight once a step.
        let large = weight_bytes(&model.weights()) > PACK_UP_TO_BYTES;
        let parallel = large && threads > 1 && rayon::current_num_threads() > 1;
        let positions = longest + params.max_new_tokens;
        let Some(cpu) = cpu_decoder(model, positions, params.kernels, parallel)? else {
            let prefill = Prefill::run(model, prompts, params.max_new_tokens)?;
            let logits = Logits::Tensor(prefill.logits.shallow_clone());
            let mut steps = LibtorchSteps::new(model, prefill);
            return decode(logits, &mut steps, prompts.len(), 0, params, decoder);
        };
        let shards = threads.min(prompts.len() / MIN_ROWS_PER_THREAD).max(1);
        if shards == 1 || large {
            return generate_on_cpu(&cpu, prompts, 0, params, decoder);
        }
        let per_shard = prompts.len().div_ceil(shards);
        let results: Vec<Result<Vec<Completion>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = prompts
                .chunks(per_shard)
                .enumerate()
                .map(|(index, shard)| {
                    let (cpu, first) = (&cpu, index * per_shard);
                    scope.spawn(move || {
                        // Top-k / top-p filtering runs through libtorch: one thread each.
                        tch::set_num_threads(1);
                        tch::no_grad(|| generate_on_cpu(cpu, shard, first, params, decoder))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a sampling thread panicked"))
                .collect()
        });
        // A thread's count is also libtorch's default for threads started later.
        tch::set_num_threads(threads as i32);
        let mut completions = Vec::with_capacity(prompts.len());
        for shard in results {
            completions.extend(shard?);
        }
        Ok(completions)
    })
}

/// What runs sampling's forward passes for `model` by default, in words.
pub fn default_path(model: &Transformer) -> String {
    let kind = model.weights().embed.kind();
    let readable = matches!(kind, tch::Kind::Float | tch::Kind::BFloat16);
    let on_cpu = model.device() == tch::Device::Cpu;
    if on_cpu && libtorch_bf16_is_faster(model) {
        return "libtorch (bf16 weights, and this CPU has AVX512_BF16 for them)".into();
    }
    match (readable && on_cpu, KernelSet::detect_avx2()) {
        (true, Some(avx2)) => format!(
            "the plain-Rust CPU decoder with {} kernels, reading the {kind:?} weights in place",
            avx2.name()
        ),
        (true, None) => "libtorch (this CPU lacks AVX2/FMA for the CPU decoder)".into(),
        (false, _) => format!(
            "libtorch (the CPU decoder takes f32 and bf16 models on the CPU; this one is {kind:?} on {:?})",
            model.device()
        ),
    }
}

/// For bf16 weights on a CPU with AVX512_BF16, libtorch's bf16 kernels (bf16 products,
/// f32 sums) beat the CPU decoder, which computes in f32: at the Qwen2.5-0.5B shape,
/// 16 rows × 64 tokens, 11.2 s against 18.4 s (`rlvr bench sample --shape qwen2.5-0.5b
/// --dtype bf16`). Without AVX512_BF16, libtorch has no fast bf16 product.
fn libtorch_bf16_is_faster(model: &Transformer) -> bool {
    let bf16 = model.weights().embed.kind() == tch::Kind::BFloat16;
    #[cfg(target_arch = "x86_64")]
    let native = std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let native = false;
    bf16 && native
}

/// The plain-Rust decoder `kernels` asks for, for positions below `positions`; `None`
/// means libtorch runs the passes.
fn cpu_decoder(
    model: &Transformer,
    positions: usize,
    kernels: Kernels,
    parallel: bool,
) -> Result<Option<CpuDecoder<'_>>> {
    Ok(match kernels {
        Kernels::Auto if libtorch_bf16_is_faster(model) => None,
        Kernels::Auto => KernelSet::detect_avx2()
            .and_then(|avx2| CpuDecoder::new(model, positions, avx2, parallel)),
        Kernels::Portable => Some(
            CpuDecoder::new(model, positions, KernelSet::portable(), parallel)
                .context("the portable CPU decoder needs an f32 or bf16 model on the CPU")?,
        ),
        Kernels::Libtorch => None,
    })
}

/// Generates the completions of `prompts`, rows `first_row..` of the whole batch, with
/// the CPU decoder on this thread.
fn generate_on_cpu(
    cpu: &CpuDecoder,
    prompts: &[Vec<i64>],
    first_row: usize,
    params: &SamplingParams,
    decoder: Option<Decoder>,
) -> Result<Vec<Completion>> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut steps = CpuSteps {
        decoder: cpu,
        cache: cpu.cache(prompts.len(), longest + params.max_new_tokens),
    };
    let logits = steps.prompts(prompts)?;
    decode(
        logits,
        &mut steps,
        prompts.len(),
        first_row,
        params,
        decoder,
    )
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

/// Samples `rows` completions, the rows from `first_row` on of the whole batch, from
/// the logits after their prompts and the steps that continue them.
fn decode(
    mut logits: Logits,
    steps: &mut impl DecodeSteps,
    rows: usize,
    first_row: usize,
    params: &SamplingParams,
    decoder: Option<Decoder>,
) -> Result<Vec<Completion>> {
    let mut completions: Vec<Completion> = (0..rows).map(|_| Completion::empty()).collect();
    // `active[j]` is the row (within this call) of batch row j.
    let mut active: Vec<usize> = (0..rows).collect();
    // Our own seeded generators rather than libtorch's global one, so that a seed gives
    // the same completions whatever else runs in the process.
    let mut rngs: Vec<StdRng> = (0..rows)
        .map(|row| row_rng(params.seed, first_row + row))
        .collect();
    for step in 0..params.max_new_tokens {
        let uniforms: Vec<f64> = active.iter().map(|&p| rngs[p].random()).collect();
        let (tokens, logprobs) = pick::pick(logits, params, &uniforms)?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, &index) in active.iter().enumerate() {
            let completion = &mut completions[index];
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
