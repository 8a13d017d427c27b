//! Benchmarks that print ratios against a baseline measured in the same run:
//! `sample` (here), `rewards` and `rl`.
//!
//! `rlvr bench sample`: sampling throughput with the KV cache against a no-cache
//! baseline and, when a Python with transformers is available, against HF
//! `generate()` on the same model and batch, all in one invocation. Libtorch is very
//! sensitive to other busy processes on a 2-core machine: run it on a quiet machine.

pub mod rewards;
pub mod rl;
mod transformers;

use crate::model::{Model, ModelConfig, position_ids_from_mask};
use crate::sample::{self, Kernels, SamplingParams};
use crate::types::Dtype;
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use transformers::HfGenerate;

pub struct SampleBench {
    pub shape: Shape,
    pub dtype: Dtype,
    pub device: Device,
    pub rows: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub threads: usize,
    pub repeats: usize,
}

/// The model shapes the benchmarks build (random weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The ~1M-parameter Qwen2 of the tiny benchmarks.
    Small,
    /// Qwen2.5-0.5B's shape, untied: 24 layers, hidden 896, 14 heads / 2 KV heads,
    /// MLP 4864, vocabulary 151,936 (630M parameters).
    #[value(name = "qwen2.5-0.5b")]
    Qwen05b,
}

impl Shape {
    pub fn config(self) -> ModelConfig {
        match self {
            Shape::Small => bench_model_config(),
            Shape::Qwen05b => {
                let mut config = ModelConfig::tiny_qwen2(151_936, 896, 24, 14);
                config.num_key_value_heads = Some(2);
                config.intermediate_size = 4864;
                config.tie_word_embeddings = false;
                config.max_position_embeddings = 32_768;
                config.rms_norm_eps = 1e-6;
                config.rope_theta = Some(1_000_000.0);
                config
            }
        }
    }
}

/// The ~1M-parameter Qwen2 the benchmark samples from.
pub fn bench_model_config() -> ModelConfig {
    let mut config = ModelConfig::tiny_qwen2(512, 128, 4, 4);
    config.intermediate_size = 384;
    config
}

/// Memory reads per second this machine's cores get (measured: 22-25 GB/s), for the
/// bandwidth floor of a decode step, which reads every weight once.
const READ_BANDWIDTH: f64 = 23e9;

pub fn sample(bench: &SampleBench) -> Result<()> {
    tch::set_num_threads(bench.threads as i32);
    let config = bench.shape.config();
    let model = Model::random(&config, bench.device, bench.dtype, 0)?;
    let parameters = model.parameter_count();
    let small = bench.shape == Shape::Small;
    let prompts: Vec<Vec<i64>> = (0..bench.rows)
        .map(|r| {
            (0..bench.prompt_tokens)
                .map(|t| ((r * 31 + t * 7) % 500 + 3) as i64)
                .collect()
        })
        .collect();
    let params = SamplingParams {
        max_new_tokens: bench.new_tokens,
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let generated = (bench.rows * bench.new_tokens) as f64;
    println!(
        "sampling benchmark: Qwen2 {parameters} parameters ({:?} on {:?}), {} rows × {} new tokens after {}-token prompts, {} libtorch thread(s), best of {}",
        bench.dtype,
        bench.device,
        bench.rows,
        bench.new_tokens,
        bench.prompt_tokens,
        bench.threads,
        bench.repeats
    );
    // Every decode step reads every weight but the embeddings once.
    let element = if bench.dtype == Dtype::F32 { 4.0 } else { 2.0 };
    let embeddings = (config.vocab_size * config.hidden_size) as f64;
    let step_bytes = (parameters as f64 - embeddings) * element;
    let floor = bench.new_tokens as f64 * step_bytes / READ_BANDWIDTH;

    let libtorch_params = SamplingParams {
        kernels: Kernels::Libtorch,
        ..params.clone()
    };
    // rlvr and transformers take turns, so that both see the same load from the rest of
    // the machine; the other baselines run in this process, one after the other.
    let mut transformers = HfGenerate::start(&model, bench);
    let run_rlvr = || sample::generate(&model.transformer, &prompts, &params, None).map(|_| ());
    run_rlvr()?; // warm-up
    let (mut cached, mut hf_seconds) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..bench.repeats.max(1) {
        let started = Instant::now();
        run_rlvr()?;
        cached = cached.min(started.elapsed().as_secs_f64());
        if let Ok(hf) = &mut transformers {
            match hf.time_one() {
                Ok(seconds) => hf_seconds = hf_seconds.min(seconds),
                Err(error) => transformers = Err(error),
            }
        }
    }
    if let Ok(hf) = &mut transformers {
        hf.stop();
    }
    // At real sizes one run of each baseline is long enough to time.
    let repeats = if small { bench.repeats } else { 1 };
    let libtorch = best_of(repeats, || {
        sample::generate(&model.transformer, &prompts, &libtorch_params, None).map(|_| ())
    })?;
    // Seconds per run: two are enough to see a ×10 gap.
    let uncached = if small && bench.device == Device::Cpu {
        Some(best_of(bench.repeats.min(2), || {
            no_cache_generate(&model, &prompts, &params)
        })?)
    } else {
        None
    };
    // What `Kernels::Auto` ran.
    let steps = sample::default_path(&model.transformer);
    println!(
        "  rlvr                {:>9.0} tokens/s  ({cached:.3} s)   decode steps: {steps}",
        generated / cached,
    );
    if bench.device == Device::Cpu {
        println!(
            "  bandwidth floor     {floor:.3} s for {} decode steps reading {:.2} GB each: rlvr at {:.0}% of it",
            bench.new_tokens,
            step_bytes / 1e9,
            100.0 * floor / cached
        );
    }
    println!(
        "  rlvr, libtorch steps{:>9.0} tokens/s  ({libtorch:.3} s)   rlvr / this ×{:.2}",
        generated / libtorch,
        libtorch / cached
    );
    if let Some(uncached) = uncached {
        println!(
            "  rlvr, no KV cache   {:>9.0} tokens/s  ({uncached:.3} s)   rlvr / this ×{:.2}",
            generated / uncached,
            uncached / cached
        );
    }

    match transformers {
        Ok(_) => println!(
            "  transformers        {:>9.0} tokens/s  ({hf_seconds:.3} s)   rlvr / transformers ×{:.2}",
            generated / hf_seconds,
            hf_seconds / cached
        ),
        Err(reason) => println!("  transformers        skipped: {reason:#}"),
    }
    Ok(())
}

fn best_of(repeats: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    run()?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        run()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// The baseline: every step runs the whole sequence through the model again.
fn no_cache_generate(model: &Model, prompts: &[Vec<i64>], params: &SamplingParams) -> Result<()> {
    tch::no_grad(|| {
        let flat: Vec<i64> = prompts.iter().flatten().copied().collect();
        let mut ids = Tensor::from_slice(&flat).reshape([prompts.len() as i64, -1]);
        for _ in 0..params.max_new_tokens {
            let mask = ids.ones_like();
            let logits =
                model
                    .transformer
                    .forward(&ids, &position_ids_from_mask(&mask), &mask, None)?;
            let last = logits.select(1, -1).to_kind(Kind::Float) / params.temperature;
            let next = last.softmax(-1, Kind::Float).multinomial(1, false);
            ids = Tensor::cat(&[&ids, &next], 1);
        }
        Ok(())
    })
}

pub(crate) fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("rlvr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
