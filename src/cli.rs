//! The `rlvr` command line. Only commands that work are listed.

use crate::config::{self, RunConfig, TaskConfig};
use crate::inspect;
use crate::sample::SamplingParams;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rlvr",
    version,
    about = "Reinforcement-learning post-training for language models (GRPO/PPO, verifiable rewards)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate run configs and task files (YAML) and print them resolved with defaults.
    Check {
        /// Files to check; a file with a `rewards` key is read as a task, any other as a run config.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print only errors, not the resolved configs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Report what this machine provides: libtorch, CUDA, threads, sandbox modules.
    Env,
    /// Run the end-to-end demo: data, tokenizer, pretrain, SFT, GRPO, SFT vs RL report.
    Demo {
        /// Redo every stage instead of reusing finished ones.
        #[arg(long)]
        fresh: bool,
        /// The story to tell: arithmetic (math verifier) or code (sandboxed tests).
        #[arg(long, value_enum, default_value = "arithmetic")]
        task: crate::demo::DemoTask,
    },
    /// Pretrain a model on a text corpus (config: model.init or model.path, data).
    Pretrain(TrainArgs),
    /// Supervised fine-tuning on conversations, loss on assistant tokens (config: model, data).
    Sft(TrainArgs),
    /// Reinforcement learning against a task's rewards (config: model, task, rl).
    Rl(TrainArgs),
    /// Train a reward model on preference pairs, Bradley–Terry loss (config: model, data, rm).
    TrainRm(TrainArgs),
    /// Evaluate a checkpoint on a task: greedy accuracy, pass@k, maj@k, rewards, length.
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        task: PathBuf,
        #[command(flatten)]
        settings: EvalArgs,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare checkpoints on the same items and seeds (the first is the baseline):
    /// Wilson intervals, McNemar test, paired bootstrap, and an HTML report.
    Compare {
        #[arg(required = true, num_args = 2..)]
        models: Vec<PathBuf>,
        #[arg(long)]
        task: PathBuf,
        #[command(flatten)]
        settings: EvalArgs,
        /// Where to write the HTML report.
        #[arg(long, default_value = "runs/compare/report.html")]
        report: PathBuf,
    },
    /// Show how a text splits into tokens and ids.
    Tokenize {
        /// A model folder or a tokenizer.json.
        #[arg(long)]
        tokenizer: PathBuf,
        text: String,
    },
    /// Print each token's id and log-prob under a model (for debugging and perplexity).
    Logprobs {
        #[arg(long)]
        model: PathBuf,
        /// Text to score (needs the model's tokenizer.json).
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        text: Option<String>,
        /// Comma-separated token ids to score.
        #[arg(long)]
        ids: Option<String>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print each position's full logits row.
        #[arg(long)]
        logits: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Score every record's reference completion (or given completions) with a task's
    /// rewards: per-function means, verdicts, slowest jobs, infrastructure errors.
    RewardCheck {
        task: PathBuf,
        /// jsonl with {"completion": ...} per line (optionally {"index": i}).
        #[arg(long)]
        completions: Option<PathBuf>,
        /// Only the first N records.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 5)]
        slowest: usize,
        #[arg(long, default_value_t = 5)]
        failures: usize,
    },
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        kind: BenchKind,
    },
    /// Sample completions of a prompt from a model folder.
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user turn of the chat template.
        #[arg(long)]
        chat: bool,
        #[arg(short, long, default_value_t = 4)]
        n: usize,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 for greedy decoding.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Stop when the completion contains this text (repeatable).
        #[arg(long = "stop")]
        stop_strings: Vec<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// Samples per item for pass@k and maj@k (0: greedy only).
    #[arg(long, default_value_t = 8)]
    samples: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl EvalArgs {
    fn settings(&self) -> crate::eval::EvalSettings {
        crate::eval::EvalSettings {
            limit: self.limit,
            samples: self.samples,
            temperature: self.temperature,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
        }
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    config: PathBuf,
    /// Continue the run from its last complete checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Delete what the run's folder holds and start again.
    #[arg(long)]
    overwrite: bool,
    /// With --resume: continue even if the config differs from the one the run
    /// started with (run.json records what changed).
    #[arg(long, requires = "resume")]
    allow_config_change: bool,
}

impl TrainArgs {
    fn start(
        self,
        run: fn(&RunConfig, crate::train::StartOptions) -> Result<PathBuf>,
    ) -> Result<()> {
        let config = RunConfig::load(&self.config)?;
        let options = crate::train::StartOptions {
            resume: self.resume,
            overwrite: self.overwrite,
            allow_config_change: self.allow_config_change,
        };
        let model = run(&config, options)?;
        println!("final model: {}", model.display());
        Ok(())
    }
}

#[derive(Subcommand)]
enum BenchKind {
    /// Sampling tokens/s: rlvr vs its libtorch steps, no KV cache and transformers' generate().
    Sample {
        #[arg(long, default_value_t = 64)]
        rows: usize,
        #[arg(long, default_value_t = 16)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// CPU threads for both sides (rlvr: one sampling shard per thread; torch:
        /// intra-op threads).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Each side's time is its best of this many runs (the machine is noisy).
        #[arg(long, default_value_t = 10)]
        repeats: usize,
    },
    /// Seconds per GRPO step (sample / score / update) vs TRL's GRPOTrainer.
    Rl {
        #[arg(long, default_value_t = 8)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Graded jobs/s in the wasm sandbox vs a native python3 subprocess per job.
    Rewards {
        #[arg(long, default_value = "tasks/humaneval.yaml")]
        task: PathBuf,
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { files, quiet } => check(&files, quiet),
        Command::Env => print_env(),
        Command::Eval {
            model,
            task,
            settings,
            json,
        } => crate::eval::evaluate(&model, &task, &settings.settings()).map(|evaluation| {
            if json {
                println!("{}", serde_json::json!(evaluation.summary));
            } else {
                crate::eval::print_summary(&evaluation.summary);
            }
        }),
        Command::Compare {
            models,
            task,
            settings,
            report,
        } => crate::compare::compare(&models, &task, &settings.settings()).and_then(|comparison| {
            crate::compare::print_table(&comparison);
            crate::compare::report::write(&comparison, &report)?;
            println!("report: {}", report.display());
            Ok(())
        }),
        Command::Pretrain(args) => args.start(crate::train::pretrain::run),
        Command::Sft(args) => args.start(crate::train::sft::run),
        Command::Rl(args) => args.start(crate::train::grpo::run),
        Command::TrainRm(args) => args.start(crate::train::reward_model::run),
        Command::Demo { fresh, task } => crate::demo::run(fresh, task),
        Command::Bench {
            kind:
                BenchKind::Sample {
                    rows,
                    prompt_tokens,
                    new_tokens,
                    threads,
                    repeats,
                },
        } => crate::bench::sample(&crate::bench::SampleBench {
            rows,
            prompt_tokens,
            new_tokens,
            threads,
            repeats,
        }),
        Command::RewardCheck {
            task,
            completions,
            limit,
            slowest,
            failures,
        } => {
            let options = crate::reward::check::CheckOptions {
                completions: completions.as_deref(),
                limit,
                show_slowest: slowest,
                show_failures: failures,
            };
            crate::reward::check::run(&task, &options).and_then(|report| {
                if report.infra_errors > 0 {
                    bail!(
                        "{} infrastructure error(s): the grader, not the model, failed",
                        report.infra_errors
                    );
                }
                Ok(())
            })
        }
        Command::Bench {
            kind:
                BenchKind::Rl {
                    steps,
                    warmup,
                    threads,
                },
        } => crate::bench::rl::rl(&crate::bench::rl::RlBench {
            steps,
            warmup,
            threads,
        }),
        Command::Bench {
            kind: BenchKind::Rewards { task, limit },
        } => crate::bench::rewards::rewards(&task, limit),
        Command::Tokenize { tokenizer, text } => inspect::tokenize(&tokenizer, &text),
        Command::Logprobs {
            model,
            text,
            ids,
            json,
            logits,
            device,
        } => inspect::parse_device(&device).and_then(|device| {
            inspect::logprobs(
                &model,
                text.as_deref(),
                ids.as_deref(),
                json,
                logits,
                device,
            )
        }),
        Command::Sample {
            model,
            prompt,
            chat,
            n,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            stop_strings,
            seed,
            device,
        } => {
            let params = SamplingParams {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                stop_token_ids: Vec::new(),
                stop_strings,
                seed,
                ..SamplingParams::default()
            };
            inspect::parse_device(&device)
                .and_then(|device| inspect::sample(&model, &prompt, chat, n, params, device))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loaded config of either kind, for printing.
enum Checked {
    Run(Box<RunConfig>),
    Task(Box<TaskConfig>),
}

fn load_any(path: &Path) -> Result<Checked> {
    let probe: serde_yaml::Value = config::load_yaml(path)?;
    if probe.get("rewards").is_some() {
        Ok(Checked::Task(Box::new(TaskConfig::load(path)?)))
    } else {
        Ok(Checked::Run(Box::new(RunConfig::load(path)?)))
    }
}

fn check(files: &[PathBuf], quiet: bool) -> Result<()> {
    let mut failures = 0;
    for path in files {
        match load_any(path) {
            Ok(checked) => {
                let (kind, resolved) = match checked {
                    Checked::Run(c) => ("run config", serde_yaml::to_string(&c)?),
                    Checked::Task(t) => ("task", serde_yaml::to_string(&t)?),
                };
                println!("ok: {} ({kind})", path.display());
                if !quiet {
                    for line in resolved.lines() {
                        println!("    {line}");
                    }
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("error: {error:#}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} file(s) failed the check", files.len());
    }
    Ok(())
}

pub fn print_env() -> Result<()> {
    let probe = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let dot = probe.dot(&probe).double_value(&[]);
    println!("libtorch:      loaded (tch 0.26 / libtorch 2.13.0), 1·1+2·2+3·3 = {dot}");
    println!("cpu threads:   {}", tch::get_num_threads());
    println!(
        "cuda:          {}",
        if tch::Cuda::is_available() {
            format!("{} device(s)", tch::Cuda::device_count())
        } else {
            "not available".into()
        }
    );
    println!("cache:         {}", crate::cache::cache_dir().display());
    for name in ["python-3.12.wasm", "micropython.wasm"] {
        let path = crate::cache::wasm_module(name);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{} is missing: run scripts/setup.sh", path.display()))?
            .len();
        println!(
            "sandbox:       {} ({:.1} MB)",
            path.display(),
            size as f64 / 1e6
        );
    }
    Ok(())
}
