//! The run config: what `rlvr rl CONFIG` (and later stages) read.
//!
//! Key names follow TRL's GRPOConfig where one exists (num_generations, beta,
//! epsilon / epsilon_high, loss_type, scale_rewards, num_iterations, temperature,
//! max_completion_length), so a config reads familiar; defaults follow TRL too.

use super::checks::{
    non_negative_f64, optional_non_negative_f64, positive_f64, positive_usize, unit_interval,
};
use super::{ConfigError, load_yaml};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name; outputs go to `<output_dir>/<name>/`.
    pub name: String,
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub device: Device,
    pub model: ModelSection,
    /// Task file (YAML) that supplies prompts and reward functions.
    #[serde(default)]
    pub task: Option<PathBuf>,
    #[serde(default)]
    pub optim: OptimSection,
    #[serde(default)]
    pub train: TrainSection,
    /// Training data for `pretrain` (text) and `sft` (conversations).
    #[serde(default)]
    pub data: Option<DataSection>,
    #[serde(default)]
    pub rl: Option<RlSection>,
    /// Reward-model training (`rlvr train-rm`).
    #[serde(default)]
    pub rm: Option<RewardModelSection>,
    /// Extra variables for the model's chat template (`enable_thinking: false`, …),
    /// passed to every rendering of prompts and conversations, as TRL's option of the
    /// same name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardModelSection {
    /// TRL's term that keeps rewards near zero: coefficient × mean((r_c + r_r)²).
    #[serde(deserialize_with = "non_negative_f64")]
    pub center_rewards_coefficient: f64,
    /// A per-pair margin from this record field: −log σ(r_c − r_r − margin).
    pub margin_field: Option<String>,
    /// Share of the pairs held out for `eval_accuracy` (the last ones in the file).
    #[serde(deserialize_with = "unit_interval")]
    pub eval_fraction: f64,
    /// Steps between held-out evaluations (and the last step).
    #[serde(deserialize_with = "positive_usize")]
    pub eval_steps: usize,
}

impl Default for RewardModelSection {
    fn default() -> Self {
        Self {
            center_rewards_coefficient: 0.0,
            margin_field: None,
            eval_fraction: 0.1,
            eval_steps: 10,
        }
    }
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

pub use crate::types::Dtype;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Instead of `path`: a new, randomly initialised Qwen2-shaped model (pretraining).
    #[serde(default)]
    pub init: Option<ModelInit>,
    /// tokenizer.json for an `init` model; trained from the data first when missing
    /// and `data.tokenizer_vocab_size` is set.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    #[serde(default)]
    pub dtype: Dtype,
    /// Frozen reference model for the KL term; defaults to the initial policy.
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

/// The shape of a from-scratch model; the vocabulary comes from the tokenizer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInit {
    #[serde(deserialize_with = "positive_usize")]
    pub hidden_size: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub num_hidden_layers: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub num_attention_heads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    /// Stop with an error that names the record.
    #[default]
    Error,
    /// Leave the record out and report how many were left out.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Text (`.txt`: one document per line) or jsonl/parquet records.
    pub path: PathBuf,
    /// Field holding a document's text in jsonl records (pretraining).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Field holding `[{role, content}]` conversations (SFT).
    #[serde(default = "default_messages_field")]
    pub messages_field: String,
    /// Tokens per training sequence; longer conversations are cut.
    #[serde(default = "default_max_length", deserialize_with = "positive_usize")]
    pub max_length: usize,
    /// Train a BPE tokenizer of this size on the data when `model.tokenizer` is missing.
    #[serde(default)]
    pub tokenizer_vocab_size: Option<usize>,
}

fn default_text_field() -> String {
    "text".into()
}

fn default_messages_field() -> String {
    "messages".into()
}

fn default_max_length() -> usize {
    512
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    Constant,
    Linear,
    #[default]
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    #[serde(deserialize_with = "positive_f64")]
    pub learning_rate: f64,
    #[serde(deserialize_with = "non_negative_f64")]
    pub weight_decay: f64,
    #[serde(deserialize_with = "unit_interval")]
    pub adam_beta1: f64,
    #[serde(deserialize_with = "unit_interval")]
    pub adam_beta2: f64,
    #[serde(deserialize_with = "positive_f64")]
    pub adam_epsilon: f64,
    pub warmup_steps: usize,
    pub lr_scheduler: LrScheduler,
    /// Gradient-norm clipping; 0 disables it.
    #[serde(deserialize_with = "non_negative_f64")]
    pub max_grad_norm: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            learning_rate: 1e-6,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 0,
            lr_scheduler: LrScheduler::Cosine,
            max_grad_norm: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    #[serde(deserialize_with = "positive_usize")]
    pub max_steps: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub batch_size: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub gradient_accumulation_steps: usize,
    /// Steps between checkpoints; 0 saves only at the end.
    pub save_steps: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub logging_steps: usize,
    /// Steps between writes to samples.jsonl (RL); 0 never writes samples.
    pub sample_log_steps: usize,
    /// What to do with a data row that lacks a needed field.
    pub on_bad_record: OnBadRecord,
    /// Keep only each decoder layer's input in the forward and run the layer again
    /// in the backward: less memory for one more forward through the layers.
    pub gradient_checkpointing: bool,
    /// Micro-batches hold at most this many padded tokens (rows × longest sequence)
    /// as well as at most `batch_size` rows; 0: rows only.
    pub max_tokens_per_micro_batch: usize,
    /// libtorch threads per step; 0 adapts to the machine: other busy processes get
    /// their cores back (see `train/threads.rs`). A fixed count repeats bit for bit.
    pub threads: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            max_steps: 100,
            batch_size: 8,
            gradient_accumulation_steps: 1,
            save_steps: 0,
            logging_steps: 1,
            sample_log_steps: 10,
            on_bad_record: OnBadRecord::Error,
            gradient_checkpointing: false,
            max_tokens_per_micro_batch: 0,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    Grpo,
    Ppo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    Grpo,
    Bnpo,
    DrGrpo,
    #[default]
    Dapo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    #[default]
    Group,
    Batch,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// Group-relative: (r − group mean) / (std + 1e-4), per `scale_rewards`.
    #[default]
    Grpo,
    /// Leave-one-out baseline: r − mean of the other completions of the prompt.
    Rloo,
    /// REINFORCE++: rewards whitened over the batch.
    ReinforcePp,
    /// REINFORCE++-baseline: group mean subtracted, then whitened over the batch.
    ReinforcePpBaseline,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlSection {
    pub algorithm: Algorithm,
    pub advantage_estimator: AdvantageEstimator,
    /// Distinct prompts sampled per optimizer step.
    #[serde(deserialize_with = "positive_usize")]
    pub prompts_per_step: usize,
    /// Completions sampled per prompt (the group size G).
    #[serde(deserialize_with = "positive_usize")]
    pub num_generations: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub max_completion_length: usize,
    #[serde(deserialize_with = "positive_f64")]
    pub temperature: f64,
    #[serde(deserialize_with = "unit_interval")]
    pub top_p: f64,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    /// KL coefficient against the frozen reference; 0 skips the reference model.
    #[serde(deserialize_with = "non_negative_f64")]
    pub beta: f64,
    #[serde(deserialize_with = "non_negative_f64")]
    pub epsilon: f64,
    /// Upper clip (DAPO's clip-higher); defaults to `epsilon`.
    #[serde(deserialize_with = "optional_non_negative_f64")]
    pub epsilon_high: Option<f64>,
    pub loss_type: LossType,
    pub scale_rewards: ScaleRewards,
    /// Policy updates per generation batch (> 1 reuses stored old log-probs).
    #[serde(deserialize_with = "positive_usize")]
    pub num_iterations: usize,
    /// Exclude completions cut off at max_completion_length from the loss.
    pub mask_truncated_completions: bool,
    /// DAPO dynamic sampling: at most this many extra prompt draws per step to replace
    /// groups whose rewards have zero spread; 0 disables it.
    pub dynamic_sampling_max_draws: usize,
    /// The run stops when more than this fraction of a step's completions could not be
    /// graded (a grader failure, not a wrong answer: left out of the update).
    #[serde(deserialize_with = "unit_interval")]
    pub max_ungraded_rate: f64,
    /// PPO's settings (algorithm: ppo).
    pub ppo: PpoSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoSection {
    /// GAE discount and smoothing.
    #[serde(deserialize_with = "unit_interval")]
    pub gamma: f64,
    #[serde(deserialize_with = "unit_interval")]
    pub lam: f64,
    /// Weight of the value loss.
    #[serde(deserialize_with = "non_negative_f64")]
    pub vf_coef: f64,
    /// Values move at most this far from the rollout's values (clipped value loss).
    #[serde(deserialize_with = "non_negative_f64")]
    pub cliprange_value: f64,
    /// Per-token KL penalty (k1) in the reward; adapted when `kl_target` is set.
    #[serde(deserialize_with = "non_negative_f64")]
    pub kl_coef: f64,
    #[serde(deserialize_with = "optional_non_negative_f64")]
    pub kl_target: Option<f64>,
    #[serde(deserialize_with = "positive_f64")]
    pub kl_horizon: f64,
    /// Passes over each rollout batch, and minibatches per pass (one update each).
    #[serde(deserialize_with = "positive_usize")]
    pub num_ppo_epochs: usize,
    #[serde(deserialize_with = "positive_usize")]
    pub num_mini_batches: usize,
    pub whiten_advantages: bool,
    /// The value head on the policy's own hidden states (`shared`), or on a separate
    /// critic transformer initialised from the policy (`separate`).
    pub critic: Critic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Critic {
    #[default]
    Shared,
    Separate,
}

impl Default for PpoSection {
    fn default() -> Self {
        Self {
            gamma: 1.0,
            lam: 0.95,
            vf_coef: 0.1,
            cliprange_value: 0.2,
            kl_coef: 0.05,
            kl_target: None,
            kl_horizon: 10_000.0,
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            whiten_advantages: true,
            critic: Critic::Shared,
        }
    }
}

impl PpoSection {
    /// Optimizer steps per rollout batch.
    pub fn updates_per_batch(&self) -> usize {
        self.num_ppo_epochs * self.num_mini_batches
    }
}

impl Default for RlSection {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Grpo,
            advantage_estimator: AdvantageEstimator::Grpo,
            prompts_per_step: 8,
            num_generations: 8,
            max_completion_length: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: None,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
            num_iterations: 1,
            mask_truncated_completions: false,
            dynamic_sampling_max_draws: 0,
            max_ungraded_rate: 0.05,
            ppo: PpoSection::default(),
        }
    }
}

impl RlSection {
    pub fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }
}

impl RunConfig {
    /// Loads a run config and checks the rules that span several keys.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load_yaml(path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let fail = |key_path: &str, message: String| ConfigError {
            file: path.to_path_buf(),
            key_path: key_path.to_string(),
            line_column: None,
            message,
            suggestion: None,
        };
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            return Err(fail(
                "name",
                format!(
                    "`{}` is not a usable run name (non-empty, no slashes)",
                    self.name
                ),
            ));
        }
        match (&self.model.path, &self.model.init) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    "model.init",
                    "give either model.path (load) or model.init (new model), not both".into(),
                ));
            }
            (None, None) => {
                return Err(fail(
                    "model.path",
                    "missing: give model.path (a model folder) or model.init (a new model)".into(),
                ));
            }
            (None, Some(init)) => {
                if init.hidden_size % init.num_attention_heads != 0 {
                    return Err(fail(
                        "model.init.num_attention_heads",
                        format!(
                            "must divide hidden_size ({}), got {}",
                            init.hidden_size, init.num_attention_heads
                        ),
                    ));
                }
                if self.model.tokenizer.is_none() {
                    return Err(fail(
                        "model.tokenizer",
                        "a new model (model.init) needs a tokenizer.json path".into(),
                    ));
                }
            }
            (Some(_), None) => {}
        }
        if let Some(rl) = &self.rl {
            let updates = rl.ppo.updates_per_batch();
            if rl.algorithm == Algorithm::Ppo && !self.train.save_steps.is_multiple_of(updates) {
                return Err(fail(
                    "train.save_steps",
                    format!(
                        "must be a multiple of rl.ppo.num_ppo_epochs × num_mini_batches ({updates}) \
                         so that a checkpoint never falls inside one rollout batch's updates"
                    ),
                ));
            }
            if rl.num_iterations > 1 && !self.train.save_steps.is_multiple_of(rl.num_iterations) {
                return Err(fail(
                    "train.save_steps",
                    format!(
                        "must be a multiple of rl.num_iterations ({}) so that a checkpoint \
                         never falls inside one generation batch's updates",
                        rl.num_iterations
                    ),
                ));
            }
            if rl.epsilon_high() < rl.epsilon {
                return Err(fail(
                    "rl.epsilon_high",
                    format!(
                        "must be >= rl.epsilon ({}), got {}",
                        rl.epsilon,
                        rl.epsilon_high()
                    ),
                ));
            }
            if rl.algorithm == Algorithm::Grpo && rl.num_generations < 2 {
                return Err(fail(
                    "rl.num_generations",
                    "GRPO compares completions within a group: it needs at least 2 \
                     generations per prompt"
                        .into(),
                ));
            }
            if self.task.is_none() {
                return Err(fail("task", "an `rl` section needs a `task` file".into()));
            }
        }
        Ok(())
    }

    /// The folder this run writes to.
    pub fn run_dir(&self) -> PathBuf {
        self.output_dir.join(&self.name)
    }
}
