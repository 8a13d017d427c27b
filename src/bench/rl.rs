//! `rlvr bench rl`: the wall time of a GRPO step split into sample / score / update on
//! the ~1M-parameter Qwen2 of `bench sample`, against TRL's GRPOTrainer on the same
//! weights, prompts and settings in the same invocation (8 prompts × 8 generations,
//! 32 new tokens, beta 0.04, loss_type grpo, one micro-batch), when the venv of
//! `scripts/python-env.sh` has trl (RLVR_WITH_TRL=1). Both stop at `<|end|>`.

use super::{tail, tempfile_dir};
use crate::config::{RunConfig, TaskConfig};
use crate::data::prompts::{Prompt, load_prompts};
use crate::model::Model;
use crate::run::RunDir;
use crate::tokenizer::Tokenizer;
use crate::train::{self, StartOptions};
use crate::types::Dtype;
use anyhow::{Context, Result, bail};
use std::path::Path;
use tch::Device;

pub struct RlBench {
    pub shape: super::Shape,
    /// The policy's and reference's dtype on both sides.
    pub dtype: Dtype,
    pub device: Device,
    pub prompts: usize,
    pub generations: usize,
    pub new_tokens: usize,
    /// Activation checkpointing on both sides.
    pub gradient_checkpointing: bool,
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
    /// Busy processes run beside both sides for the whole benchmark.
    pub load: usize,
}

/// Processes that spin on a core each until dropped: the "other busy process" a
/// shared machine has, under which both sides are measured alike.
struct BusyLoad(Vec<std::process::Child>);

impl BusyLoad {
    fn start(processes: usize) -> Result<Self> {
        let children = (0..processes)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .context("cannot start a busy process for --load")
            })
            .collect::<Result<_>>()?;
        Ok(Self(children))
    }
}

impl Drop for BusyLoad {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn rl(bench: &RlBench) -> Result<()> {
    if bench.steps <= bench.warmup {
        bail!("--steps must exceed --warmup");
    }
    tch::set_num_threads(bench.threads as i32);
    let dir = tempfile_dir()?;
    if bench.load > 0 {
        println!("with {} busy process(es) beside both sides", bench.load);
    }
    let load = BusyLoad::start(bench.load)?;
    let result = run_both(bench, &dir);
    drop(load);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_both(bench: &RlBench, dir: &Path) -> Result<()> {
    let items = crate::data::arithmetic::generate(Default::default(), 2000, 1);
    let corpus = items
        .iter()
        .map(|i| format!("{} {}", i.question, i.solution));
    let tokenizer_path = dir.join("tokenizer.json");
    Tokenizer::train_bpe(corpus, 512)?.save(&tokenizer_path)?;
    // The vocabulary matches the tokenizer so that TRL decodes every sampled id too.
    let mut model_config = bench.shape.config();
    if bench.shape == super::Shape::Small {
        model_config.vocab_size = Tokenizer::load(&tokenizer_path)?.vocab_size();
    } else {
        pad_vocabulary(&tokenizer_path, model_config.vocab_size)?;
    }
    let tokenizer = Tokenizer::load(&tokenizer_path)?;
    let model_dir = dir.join("model");
    let parameters = {
        // Dropped before the run, which loads its own copy.
        let model = Model::random(&model_config, Device::Cpu, Dtype::F32, 0)?;
        model.save(&model_dir, Some(&tokenizer_path))?;
        model.parameter_count() as f64
    };
    let (prompts_per_step, generations, new_tokens) =
        (bench.prompts, bench.generations, bench.new_tokens);

    std::fs::write(
        dir.join("task.yaml"),
        "name: bench\nsource: {generator: arithmetic, num_examples: 8}\nprompt: \"{question}\"\n\
         rewards: [{kind: regex, name: has_digit, pattern: '(?s).*[0-9].*'}]\n",
    )?;
    let config_path = dir.join("rl.yaml");
    std::fs::write(
        &config_path,
        format!(
            "name: bench\noutput_dir: {dir}\ndevice: {device}\nmodel: {{path: {model}, dtype: {dtype}}}\n\
             task: {dir}/task.yaml\n\
             optim: {{learning_rate: 1.0e-6}}\n\
             train: {{max_steps: {steps}, batch_size: 64, sample_log_steps: 0, \
             gradient_checkpointing: {checkpointing}}}\n\
             rl: {{prompts_per_step: {prompts_per_step}, num_generations: {generations}, max_completion_length: {new_tokens}, \
             beta: 0.04, loss_type: grpo}}\n",
            dir = dir.display(),
            model = model_dir.display(),
            device = if bench.device.is_cuda() {
                "cuda"
            } else {
                "cpu"
            },
            dtype = serde_yaml::to_string(&bench.dtype)?.trim(),
            steps = bench.steps,
            checkpointing = bench.gradient_checkpointing,
        ),
    )?;
    let config = RunConfig::load(&config_path)?;
    println!(
        "GRPO step benchmark: Qwen2 {parameters} parameters ({:?} on {:?}), {prompts_per_step} prompts × {generations} generations, \
         {new_tokens} new tokens, beta 0.04, loss_type grpo, gradient checkpointing {}, {} libtorch thread(s); \
         median of {} steps after {} warm-up",
        bench.dtype,
        bench.device,
        if bench.gradient_checkpointing {
            "on"
        } else {
            "off"
        },
        bench.threads,
        bench.steps - bench.warmup,
        bench.warmup
    );
    train::rl(&config, StartOptions::default())?;
    let rlvr_peak = peak_rss_gb();
    // The run kept its peak for reuse; TRL needs that memory next.
    crate::allocator::release_free_memory();
    let rows = RunDir::read_metrics(&config.run_dir())?;
    let rows = &rows[bench.warmup..];
    let median = |key: &str| -> Result<f64> {
        let mut values: Vec<f64> = rows
            .iter()
            .map(|r| r[key].as_f64().with_context(|| format!("no {key}")))
            .collect::<Result<_>>()?;
        values.sort_by(f64::total_cmp);
        Ok(values[values.len() / 2])
    };
    let step = median("time/step")?;
    let (sample, score, reference, update) = (
        median("time/sample")?,
        median("time/score")?,
        median("time/reference")?,
        median("time/update")?,
    );
    let completion = median("completions/mean_length")?;
    // The prompts both sides see, rendered with the chat template.
    let task_path = dir.join("task.yaml");
    let prompts = load_prompts(
        &TaskConfig::load(&task_path)?,
        &task_path,
        &tokenizer,
        Default::default(),
    )?;
    let prompts = &prompts[..prompts_per_step.min(prompts.len())];
    let prompt_tokens =
        prompts.iter().map(|p| p.ids.len() as f64).sum::<f64>() / prompts.len() as f64;
    // 2N FLOPs a token forward, 6N forward + backward: sampling, the reference forward
    // and the policy's forward and backward over prompt + completion.
    let rows_per_step = (prompts_per_step * generations) as f64;
    let sampled = rows_per_step * (prompt_tokens + completion);
    let flops = 2.0 * parameters * sampled + 8.0 * parameters * sampled;
    println!(
        "  rlvr          {step:.3} s/step  (sample {sample:.3}, score {score:.3}, reference {reference:.3}, update {update:.3}; \
         mean completion {completion:.1} tokens; ≈{:.1} GFLOP/s effective; peak RSS {rlvr_peak:.2} GB)",
        flops / step / 1e9
    );
    // Weights, gradients, AdamW's two moments and the frozen reference, in f32.
    println!(
        "  model state   {:.2} GB (f32 weights, gradients, 2 AdamW moments, reference)",
        parameters * 20.0 / 1e9
    );
    match trl_step(&model_dir, prompts, &tokenizer, dir, bench) {
        Ok(trl) => println!(
            "  TRL GRPO      {:.3} s/step  (generate {:.3}, rest {:.3}; ≈{:.1} GFLOP/s; peak RSS {:.2} GB)   \
             rlvr / TRL ×{:.2} faster per step",
            trl.step,
            trl.generate,
            trl.step - trl.generate,
            flops / trl.step / 1e9,
            trl.peak_rss_gb,
            trl.step / step
        ),
        Err(reason) => println!("  TRL GRPO      skipped: {reason:#}"),
    }
    Ok(())
}

/// Runs scripts/bench_trl_grpo.py on the same model and the same rendered prompts.
fn trl_step(
    model_dir: &Path,
    prompts: &[Prompt],
    tokenizer: &Tokenizer,
    dir: &Path,
    bench: &RlBench,
) -> Result<TrlTimes> {
    let python = crate::cache::cache_dir().join("pyenv/bin/python");
    if !python.exists() {
        bail!(
            "no {} (run RLVR_WITH_TRL=1 scripts/python-env.sh)",
            python.display()
        );
    }
    let prompts: Vec<String> = prompts
        .iter()
        .map(|p| tokenizer.decode(&p.ids, false))
        .collect::<Result<_>>()?;
    let prompts_path = dir.join("prompts.json");
    std::fs::write(&prompts_path, serde_json::to_string(&prompts)?)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_trl_grpo.py");
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(model_dir)
        .arg(&prompts_path)
        .args(
            [
                bench.steps,
                bench.warmup,
                bench.threads,
                bench.generations,
                bench.new_tokens,
                usize::from(bench.gradient_checkpointing),
            ]
            .map(|n| n.to_string()),
        )
        .arg(super::transformers::torch_device(bench.device))
        .arg(super::transformers::torch_dtype(bench.dtype))
        .output()
        .context("cannot run the TRL script")?;
    if !output.status.success() {
        bail!(
            "TRL failed: {}",
            tail(&String::from_utf8_lossy(&output.stderr))
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("TRL printed {last:?}"))?;
    let number = |key: &str| result[key].as_f64().with_context(|| format!("no {key}"));
    Ok(TrlTimes {
        step: number("step_seconds")?,
        generate: number("generate_seconds")?,
        peak_rss_gb: number("peak_rss_kb")? * 1024.0 / 1e9,
    })
}

struct TrlTimes {
    step: f64,
    generate: f64,
    peak_rss_gb: f64,
}

/// This process's peak resident memory (VmHWM), in GB; 0 where /proc has none.
fn peak_rss_gb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0 / 1e9)
}

/// Pads a tokenizer.json's vocabulary with placeholder tokens up to `size`, so that a
/// model with a real-sized vocabulary can be sampled and decoded (BPE never produces
/// them; decoding gives their text).
fn pad_vocabulary(path: &Path, size: usize) -> Result<()> {
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    let vocab = json["model"]["vocab"]
        .as_object_mut()
        .context("tokenizer.json has no model.vocab")?;
    let ids = vocab.values().chain(added.iter().map(|t| &t["id"]));
    let next = ids
        .filter_map(serde_json::Value::as_u64)
        .max()
        .map_or(0, |m| m + 1);
    for id in next as usize..size {
        vocab.insert(format!("<pad{id}>"), id.into());
    }
    std::fs::write(path, serde_json::to_string(&json)?)?;
    Ok(())
}
