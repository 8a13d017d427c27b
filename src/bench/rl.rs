//! `rlvr bench rl`: the wall time of a GRPO step split into sample / score / update on
//! the ~1M-parameter Qwen2 of `bench sample`, against TRL's GRPOTrainer on the same
//! weights, prompts and settings in the same invocation (8 prompts × 8 generations,
//! 32 new tokens, beta 0.04, loss_type grpo, one micro-batch), when the venv of
//! `scripts/python-env.sh` has trl (RLVR_WITH_TRL=1). Both stop at `<|end|>`.

use super::{bench_model_config, tail, tempfile_dir};
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

const PROMPTS: usize = 8;

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
    let tokenizer = Tokenizer::train_bpe(corpus, 512)?;
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path)?;
    // The vocabulary matches the tokenizer so that TRL decodes every sampled id too.
    let mut model_config = bench_model_config();
    model_config.vocab_size = tokenizer.vocab_size();
    let model = Model::random(&model_config, Device::Cpu, Dtype::F32, 0)?;
    let parameters = model.parameter_count() as f64;
    let model_dir = dir.join("model");
    model.save(&model_dir, Some(&tokenizer_path))?;

    std::fs::write(
        dir.join("task.yaml"),
        "name: bench\nsource: {generator: arithmetic, num_examples: 8}\nprompt: \"{question}\"\n\
         rewards: [{kind: regex, name: has_digit, pattern: '(?s).*[0-9].*'}]\n",
    )?;
    let config_path = dir.join("rl.yaml");
    std::fs::write(
        &config_path,
        format!(
            "name: bench\noutput_dir: {dir}\nmodel: {{path: {model}}}\ntask: {dir}/task.yaml\n\
             optim: {{learning_rate: 1.0e-6}}\n\
             train: {{max_steps: {steps}, batch_size: 64, sample_log_steps: 0}}\n\
             rl: {{prompts_per_step: {PROMPTS}, num_generations: 8, max_completion_length: 32, \
             beta: 0.04, loss_type: grpo}}\n",
            dir = dir.display(),
            model = model_dir.display(),
            steps = bench.steps,
        ),
    )?;
    let config = RunConfig::load(&config_path)?;
    println!(
        "GRPO step benchmark: Qwen2 {parameters} parameters, {PROMPTS} prompts × 8 generations, \
         32 new tokens, beta 0.04, loss_type grpo, {} libtorch thread(s); median of {} steps after {} warm-up",
        bench.threads,
        bench.steps - bench.warmup,
        bench.warmup
    );
    train::rl(&config, StartOptions::default())?;
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
    let prompt_tokens = prompts.iter().map(|p| p.ids.len() as f64).sum::<f64>() / PROMPTS as f64;
    // 2N FLOPs a token forward, 6N forward + backward: sampling, the reference forward
    // and the policy's forward and backward over prompt + completion.
    let rows_per_step = (PROMPTS * 8) as f64;
    let sampled = rows_per_step * (prompt_tokens + completion);
    let flops = 2.0 * parameters * sampled + 8.0 * parameters * sampled;
    println!(
        "  rlvr          {step:.3} s/step  (sample {sample:.3}, score {score:.3}, reference {reference:.3}, update {update:.3}; \
         mean completion {completion:.1} tokens; ≈{:.1} GFLOP/s effective)",
        flops / step / 1e9
    );
    match trl_step(&model_dir, &prompts, &tokenizer, dir, bench) {
        Ok((trl_step, trl_generate)) => println!(
            "  TRL GRPO      {trl_step:.3} s/step  (generate {trl_generate:.3}, rest {:.3}; ≈{:.1} GFLOP/s)   \
             rlvr / TRL ×{:.2} faster per step",
            trl_step - trl_generate,
            flops / trl_step / 1e9,
            trl_step / step
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
) -> Result<(f64, f64)> {
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
        .args([bench.steps, bench.warmup, bench.threads].map(|n| n.to_string()))
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
    Ok((
        result["step_seconds"].as_f64().context("no step time")?,
        result["generate_seconds"]
            .as_f64()
            .context("no generate time")?,
    ))
}
