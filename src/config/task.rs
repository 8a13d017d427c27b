//! The task file: where prompts come from, how they are rendered, and which reward
//! functions score the completions (with weights).

use super::checks::non_negative_f64;
use super::{ConfigError, load_yaml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub source: DataSource,
    /// Prompt template; `{field}` is replaced by the record's field.
    pub prompt: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Record field that holds the reference answer.
    #[serde(default)]
    pub answer_field: Option<String>,
    /// Record field that holds a reference completion (a worked solution or a
    /// canonical program): `rlvr reward-check` scores it to test the rewards.
    #[serde(default)]
    pub reference_field: Option<String>,
    /// The tags around a completion's reasoning; rewards read what follows the block.
    #[serde(default)]
    pub reasoning: ReasoningTags,
    pub rewards: Vec<RewardSpec>,
}

/// The tags around the reasoning block of a completion (`src/reward/reasoning.rs`
/// splits at them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReasoningTags {
    #[serde(default = "default_open")]
    pub open: String,
    #[serde(default = "default_close")]
    pub close: String,
}

fn default_open() -> String {
    "<think>".into()
}

fn default_close() -> String {
    "</think>".into()
}

impl Default for ReasoningTags {
    fn default() -> Self {
        Self {
            open: default_open(),
            close: default_close(),
        }
    }
}

/// What of a completion a reward reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reads {
    /// The text after the reasoning block; a block never closed gives no answer and
    /// the reward 0.
    Answer,
    /// The whole completion, reasoning included.
    Completion,
}

/// Exactly one of `path` (a jsonl or parquet file, relative to the task file) or
/// `generator` (a built-in synthetic generator) must be given.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub generator: Option<String>,
    /// Generator parameters; each generator checks its own.
    #[serde(default)]
    pub params: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub num_examples: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    Math,
    Format,
    Exact,
    Regex,
    Code,
    Script,
    RewardModel,
    /// DAPO's soft overlong punishment, a length-shaping penalty.
    Overlong,
}

/// One weighted reward function. Keys that belong to another kind are rejected.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub kind: RewardKind,
    /// Name shown in metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "one", deserialize_with = "non_negative_f64")]
    pub weight: f64,
    /// A gold reward: logged beside the others but not trained on (its weight is
    /// ignored), to watch a learned reward model being over-optimised.
    #[serde(default)]
    pub gold: bool,
    /// What the reward reads: `answer` (default) or `completion` (default for
    /// `format`, which checks the whole structure, and `overlong`, which counts tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<Reads>,
    /// math, exact: the record field with the reference (default: the task's answer_field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_field: Option<String>,
    /// math: relative tolerance for numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// math: fall back to the last number when no answer marker is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_number_fallback: Option<bool>,
    /// regex: the pattern the completion must match; format: overrides the default
    /// `<think>…</think>` then answer pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// code: record field holding the tests (a string or a list of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests_field: Option<String>,
    /// code: record field naming the function the tests call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point_field: Option<String>,
    /// code: record field with trusted code run before each test in the test's own
    /// namespace (e.g. HumanEval's prompt, whose helper functions the tests call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_field: Option<String>,
    /// code, script: cpython (default) or micropython.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::types::Runtime>,
    /// code: all_pass (default) or fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<crate::types::CodeScoring>,
    /// code, script: sandbox limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// script: a Python file, relative to the task file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
    /// reward_model: a reward-model folder (from `rlvr train-rm`), relative to the task file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// overlong: the completion length budget in tokens (DAPO's L_max); reward_model:
    /// tokens kept of prompt + completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// overlong: the soft zone before max_length (DAPO's L_cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_length: Option<usize>,
}

impl RewardSpec {
    pub fn reads(&self) -> Reads {
        self.reads.unwrap_or(match self.kind {
            RewardKind::Format | RewardKind::Overlong => Reads::Completion,
            _ => Reads::Answer,
        })
    }

    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            serde_yaml::to_string(&self.kind)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
    }

    /// The optional keys that are set, by name.
    fn keys_set(&self) -> Vec<&'static str> {
        let set = [
            ("reads", self.reads.is_some()),
            ("answer_field", self.answer_field.is_some()),
            ("tolerance", self.tolerance.is_some()),
            ("last_number_fallback", self.last_number_fallback.is_some()),
            ("pattern", self.pattern.is_some()),
            ("tests_field", self.tests_field.is_some()),
            ("entry_point_field", self.entry_point_field.is_some()),
            ("setup_field", self.setup_field.is_some()),
            ("runtime", self.runtime.is_some()),
            ("scoring", self.scoring.is_some()),
            ("fuel", self.fuel.is_some()),
            ("memory_mb", self.memory_mb.is_some()),
            ("timeout_s", self.timeout_s.is_some()),
            ("script", self.script.is_some()),
            ("model", self.model.is_some()),
            ("max_length", self.max_length.is_some()),
            ("cache_length", self.cache_length.is_some()),
        ];
        set.into_iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| k)
            .collect()
    }

    fn allowed_keys(&self) -> &'static [&'static str] {
        match self.kind {
            RewardKind::Math => &["reads", "answer_field", "tolerance", "last_number_fallback"],
            RewardKind::Exact => &["reads", "answer_field"],
            RewardKind::Format | RewardKind::Regex => &["reads", "pattern"],
            RewardKind::Code => &[
                "reads",
                "tests_field",
                "entry_point_field",
                "setup_field",
                "scoring",
                "runtime",
                "fuel",
                "memory_mb",
                "timeout_s",
            ],
            RewardKind::Script => &[
                "reads",
                "script",
                "runtime",
                "fuel",
                "memory_mb",
                "timeout_s",
            ],
            RewardKind::RewardModel => &["reads", "model", "max_length"],
            RewardKind::Overlong => &["max_length", "cache_length"],
        }
    }

    /// Rejects keys of another kind and missing required keys.
    fn validate(&self) -> Result<(), String> {
        let allowed = self.allowed_keys();
        if let Some(stray) = self.keys_set().into_iter().find(|k| !allowed.contains(k)) {
            return Err(format!(
                "`{stray}` does not apply to kind `{}` (its keys: {})",
                self.display_name(),
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        match self.kind {
            RewardKind::Regex if self.pattern.is_none() => {
                Err("kind `regex` needs a `pattern`".into())
            }
            RewardKind::Script if self.script.is_none() => {
                Err("kind `script` needs a `script` file".into())
            }
            RewardKind::RewardModel if self.model.is_none() => {
                Err("kind `reward_model` needs a `model` folder".into())
            }
            RewardKind::Overlong if self.max_length.is_none() || self.cache_length.is_none() => {
                Err("kind `overlong` needs `max_length` and `cache_length`".into())
            }
            RewardKind::Overlong if self.cache_length >= self.max_length => {
                Err("`cache_length` must be smaller than `max_length`".into())
            }
            _ => Ok(()),
        }
    }
}

fn one() -> f64 {
    1.0
}

impl TaskConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let task: Self = load_yaml(path)?;
        task.validate(path)?;
        Ok(task)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let fail = |key_path: &str, message: &str| ConfigError {
            file: path.to_path_buf(),
            key_path: key_path.to_string(),
            line_column: None,
            message: message.to_string(),
            suggestion: None,
        };
        match (&self.source.path, &self.source.generator) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    "source",
                    "give either `path` or `generator`, not both",
                ));
            }
            (None, None) => {
                return Err(fail(
                    "source",
                    "needs a `path` (jsonl/parquet) or a `generator`",
                ));
            }
            _ => {}
        }
        if self.rewards.is_empty() {
            return Err(fail("rewards", "a task needs at least one reward function"));
        }
        let tags = &self.reasoning;
        if tags.open.trim().is_empty() || tags.close.trim().is_empty() {
            return Err(fail("reasoning", "`open` and `close` must not be empty"));
        }
        if tags.open == tags.close {
            return Err(fail("reasoning", "`open` and `close` must differ"));
        }
        for (i, reward) in self.rewards.iter().enumerate() {
            reward
                .validate()
                .map_err(|message| fail(&format!("rewards[{i}]"), &message))?;
            let needs_answer = matches!(reward.kind, RewardKind::Math | RewardKind::Exact);
            if needs_answer && reward.answer_field.is_none() && self.answer_field.is_none() {
                return Err(fail(
                    &format!("rewards[{i}]"),
                    "needs an `answer_field` (on the reward or the task)",
                ));
            }
        }
        if self.rewards.iter().all(|r| r.weight == 0.0) {
            return Err(fail(
                "rewards",
                "every reward weight is 0: nothing would be learned",
            ));
        }
        Ok(())
    }
}
