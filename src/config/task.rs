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
    pub rewards: Vec<RewardSpec>,
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
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub kind: RewardKind,
    /// Name shown in metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "one", deserialize_with = "non_negative_f64")]
    pub weight: f64,
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
        if self.rewards.iter().all(|r| r.weight == 0.0) {
            return Err(fail(
                "rewards",
                "every reward weight is 0: nothing would be learned",
            ));
        }
        Ok(())
    }
}
