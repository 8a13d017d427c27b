//! The `rlvr` command line: one argument struct per command, each a thin call into the
//! library. Only commands that work are listed.

use crate::config::RunConfig;
use crate::inspect;
use crate::sample::SamplingParams;
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
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
    Check(CheckArgs),
    /// Report what this machine provides: libtorch, CUDA, threads, sandbox modules.
    Env,
    /// Run the end-to-end demo: data, tokenizer, pretrain, SFT, GRPO, SFT vs RL report.
    Demo(DemoArgs),
    /// Pretrain a model on a text corpus (config: model.init or model.path, data).
    Pretrain(TrainArgs),
    /// Supervised fine-tuning on conversations, loss on assistant tokens (config: model, data).
    Sft(TrainArgs),
    /// Reinforcement learning against a task's rewards (config: model, task, rl).
    Rl(TrainArgs),
    /// Train a reward model on preference pairs, Bradley–Terry loss (config: model, data, rm).
    TrainRm(TrainArgs),
    /// Evaluate a checkpoint on a task: greedy accuracy, pass@k, maj@k, rewards, length.
    Eval(EvalCommand),
    /// Compare checkpoints on the same items and seeds (the first is the baseline):
    /// Wilson intervals, McNemar test, paired bootstrap, and an HTML report.
    Compare(CompareArgs),
    /// Show how a text splits into tokens and ids.
    Tokenize(TokenizeArgs),
    /// Render a conversation file ({"messages", "add_generation_prompt",
    /// "continue_final_message", "tools", "template_kwargs"}) with a tokenizer folder's
    /// chat template: text, input ids and assistant mask.
    RenderChat(RenderChatArgs),
    /// What rlvr will do with a model folder: architecture, dtype, chat template, stop
    /// tokens, sampling path and a sample prompt.
    Inspect {
        #[command(subcommand)]
        what: InspectWhat,
    },
    /// Print each token's id and log-prob under a model (for debugging and perplexity).
    Logprobs(LogprobsArgs),
    /// Score every record's reference completion (or given completions) with a task's
    /// rewards: per-function means, verdicts, slowest jobs, infrastructure errors.
    RewardCheck(RewardCheckArgs),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        kind: BenchKind,
    },
    /// Sample completions of a prompt from a model folder.
    Sample(SampleArgs),
}

pub fn main() -> ExitCode {
    crate::allocator::keep_freed_memory();
    let outcome = match Cli::parse().command {
        Command::Check(args) => crate::config::files::check_files(&args.files, args.quiet),
        Command::Env => crate::env_report::print(),
        Command::Demo(args) => args.run(),
        Command::Pretrain(args) => args.start(crate::train::pretrain::run),
        Command::Sft(args) => args.start(crate::train::sft::run),
        Command::Rl(args) => args.start(crate::train::rl),
        Command::TrainRm(args) => args.start(crate::train::reward_model::run),
        Command::Eval(args) => args.run(),
        Command::Compare(args) => args.run(),
        Command::Tokenize(args) => inspect::tokenize(&args.tokenizer, &args.text),
        Command::RenderChat(args) => {
            inspect::render_chat(&args.tokenizer, &args.conversation, args.json)
        }
        Command::Inspect {
            what: InspectWhat::Model { dir },
        } => inspect::model_report(&dir).map(|report| print!("{report}")),
        Command::Logprobs(args) => args.run(),
        Command::RewardCheck(args) => args.run(),
        Command::Bench { kind } => kind.run(),
        Command::Sample(args) => args.run(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Files to check; a file with a `rewards` key is read as a task, any other as a run config.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print only errors, not the resolved configs.
    #[arg(long, short)]
    quiet: bool,
}

/// The demo's story, as the command line names it.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoTaskArg {
    /// Multi-digit addition with worked steps, graded by the math verifier.
    Arithmetic,
    /// One-line Python functions, graded by their asserts in the wasm sandbox.
    Code,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Redo every stage instead of reusing finished ones.
    #[arg(long)]
    fresh: bool,
    /// The story to tell: arithmetic (math verifier) or code (sandboxed tests).
    #[arg(long, value_enum, default_value = "arithmetic")]
    task: DemoTaskArg,
    /// The folder holding configs/ and tasks/ (an rlvr checkout); runs go to ROOT/runs/.
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

impl DemoArgs {
    fn run(self) -> Result<()> {
        let task = match self.task {
            DemoTaskArg::Arithmetic => crate::demo::DemoTask::Arithmetic,
            DemoTaskArg::Code => crate::demo::DemoTask::Code,
        };
        crate::demo::run(&self.root, self.fresh, task)
    }
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
    /// A JSON object of extra chat-template variables, e.g. '{"enable_thinking": false}'.
    #[arg(long, value_parser = json_object)]
    chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

fn json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))
}

impl EvalArgs {
    fn settings(&self) -> crate::eval::EvalSettings {
        crate::eval::EvalSettings {
            limit: self.limit,
            samples: self.samples,
            temperature: self.temperature,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            chat_template_kwargs: self.chat_template_kwargs.clone().unwrap_or_default(),
        }
    }
}

#[derive(clap::Args)]
struct EvalCommand {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    task: PathBuf,
    #[command(flatten)]
    settings: EvalArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl EvalCommand {
    fn run(self) -> Result<()> {
        let evaluation = crate::eval::evaluate(&self.model, &self.task, &self.settings.settings())?;
        if self.json {
            println!("{}", serde_json::json!(evaluation.summary));
        } else {
            crate::eval::print_summary(&evaluation.summary);
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct CompareArgs {
    #[arg(required = true, num_args = 2..)]
    models: Vec<PathBuf>,
    #[arg(long)]
    task: PathBuf,
    #[command(flatten)]
    settings: EvalArgs,
    /// Where to write the HTML report.
    #[arg(long, default_value = "runs/compare/report.html")]
    report: PathBuf,
}

impl CompareArgs {
    fn run(self) -> Result<()> {
        let comparison =
            crate::compare::compare(&self.models, &self.task, &self.settings.settings())?;
        crate::compare::print_table(&comparison);
        crate::compare::report::write(&comparison, &self.report)?;
        println!("report: {}", self.report.display());
        Ok(())
    }
}

#[derive(clap::Args)]
struct TokenizeArgs {
    /// A model folder or a tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    text: String,
}

#[derive(clap::Subcommand)]
enum InspectWhat {
    /// A Hugging Face model folder.
    Model { dir: PathBuf },
}

#[derive(clap::Args)]
struct RenderChatArgs {
    /// A model folder (tokenizer.json beside tokenizer_config.json / chat_template.jinja).
    #[arg(long)]
    tokenizer: PathBuf,
    /// A JSON file: {"messages": [...]} and optional keys.
    #[arg(long)]
    conversation: PathBuf,
    /// Print {"text", "input_ids", "assistant_mask"} as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct LogprobsArgs {
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
}

impl LogprobsArgs {
    fn run(self) -> Result<()> {
        let device = inspect::parse_device(&self.device)?;
        let (text, ids) = (self.text.as_deref(), self.ids.as_deref());
        inspect::logprobs(&self.model, text, ids, self.json, self.logits, device)
    }
}

#[derive(clap::Args)]
struct RewardCheckArgs {
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
}

impl RewardCheckArgs {
    fn run(self) -> Result<()> {
        let options = crate::reward::check::CheckOptions {
            completions: self.completions.as_deref(),
            limit: self.limit,
            show_slowest: self.slowest,
            show_failures: self.failures,
        };
        let report = crate::reward::check::run(&self.task, &options)?;
        if report.infra_errors > 0 {
            bail!(
                "{} infrastructure error(s): the grader, not the model, failed",
                report.infra_errors
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct SampleArgs {
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
}

impl SampleArgs {
    fn run(self) -> Result<()> {
        let params = SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            stop_token_ids: Vec::new(),
            stop_strings: self.stop_strings,
            seed: self.seed,
            ..SamplingParams::default()
        };
        let device = inspect::parse_device(&self.device)?;
        inspect::sample(&self.model, &self.prompt, self.chat, self.n, params, device)
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
        /// The model's shape (random weights).
        #[arg(long, value_enum, default_value = "small")]
        shape: crate::bench::Shape,
        /// The weights' dtype on both sides: f32, bf16.
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: crate::types::Dtype,
        /// Where both sides run: cpu, cuda or cuda:N (a `--features cuda` build).
        #[arg(long, default_value = "cpu")]
        device: String,
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
        /// The model's shape (random weights); qwen2.5-0.5b pads the benchmark's
        /// tokenizer to its 151,936-token vocabulary.
        #[arg(long, value_enum, default_value = "small")]
        shape: crate::bench::Shape,
        /// The weights' dtype on both sides: f32, bf16 (rlvr keeps f32 master weights).
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: crate::types::Dtype,
        /// Where both sides run: cpu or cuda (a `--features cuda` build).
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 8)]
        prompts: usize,
        #[arg(long, default_value_t = 8)]
        generations: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Activation checkpointing on both sides.
        #[arg(long)]
        gradient_checkpointing: bool,
        #[arg(long, default_value_t = 8)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Busy processes (a shell loop each) to run beside both sides.
        #[arg(long, default_value_t = 0)]
        load: usize,
    },
    /// Graded jobs/s in the wasm sandbox vs a native python3 subprocess per job.
    Rewards {
        #[arg(long, default_value = "tasks/humaneval.yaml")]
        task: PathBuf,
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn parse_dtype(text: &str) -> Result<crate::types::Dtype, String> {
    serde_yaml::from_str(text).map_err(|_| format!("unknown dtype {text:?}: f32, bf16 or f16"))
}

impl BenchKind {
    fn run(self) -> Result<()> {
        match self {
            BenchKind::Sample {
                shape,
                dtype,
                device,
                rows,
                prompt_tokens,
                new_tokens,
                threads,
                repeats,
            } => crate::bench::sample(&crate::bench::SampleBench {
                shape,
                dtype,
                device: inspect::parse_device(&device)?,
                rows,
                prompt_tokens,
                new_tokens,
                threads,
                repeats,
            }),
            BenchKind::Rl {
                shape,
                dtype,
                device,
                prompts,
                generations,
                new_tokens,
                gradient_checkpointing,
                steps,
                warmup,
                threads,
                load,
            } => crate::bench::rl::rl(&crate::bench::rl::RlBench {
                shape,
                dtype,
                device: inspect::parse_device(&device)?,
                prompts,
                generations,
                new_tokens,
                gradient_checkpointing,
                steps,
                warmup,
                threads,
                load,
            }),
            BenchKind::Rewards { task, limit } => crate::bench::rewards::rewards(&task, limit),
        }
    }
}
