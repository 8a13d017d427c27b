//! The `script` reward: a Python file (usually in `rewards/`) run in the sandbox. It
//! reads one JSON object on stdin (the record's fields plus `prompt`, `completion` (the
//! answer after the reasoning block, or the whole text with `reads: completion`) and
//! `reasoning`) and prints `{"score": x, "reason": "..."}` as its last line.
//!
//! A script that crashes or prints no score is the grader's failure, reported as an
//! infrastructure error. A timeout or memory verdict scores 0: a completion can cause
//! those (an expression that explodes), so they are charged to the completion.

use super::sandbox::{Limits, Runtime, Sandbox, Verdict, tail};
use super::{RewardFunction, Sample, Score};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct ScriptReward {
    path: PathBuf,
    source: String,
    runtime: Runtime,
    limits: Limits,
}

impl ScriptReward {
    pub fn load(path: &Path, runtime: Runtime, limits: Limits) -> Result<Self> {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the reward script {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            source,
            runtime,
            limits,
        })
    }

    fn failure(&self, what: &str) -> Score {
        Score::infra(format!("reward script {}: {what}", self.path.display()))
    }
}

impl RewardFunction for ScriptReward {
    fn score(&self, sample: &Sample) -> Score {
        let mut input = match sample.record {
            Value::Object(fields) => fields.clone(),
            _ => serde_json::Map::new(),
        };
        input.insert("prompt".into(), sample.prompt.into());
        input.insert("completion".into(), sample.completion.into());
        input.insert("reasoning".into(), sample.reasoning.into());
        let sandbox = match Sandbox::shared(self.runtime) {
            Ok(sandbox) => sandbox,
            Err(error) => return self.failure(&error.to_string()),
        };
        let execution = match sandbox.run(
            &self.source,
            Value::Object(input).to_string().as_bytes(),
            &self.limits,
        ) {
            Ok(execution) => execution,
            Err(error) => return self.failure(&error.to_string()),
        };
        match execution.verdict {
            Verdict::Pass => {}
            Verdict::Timeout | Verdict::Memory => {
                return Score {
                    verdict: Some(execution.verdict),
                    ..Score::new(0.0, format!("reward script: {}", execution.reason))
                };
            }
            Verdict::Fail | Verdict::Error => {
                return self.failure(&format!("failed: {}", execution.reason));
            }
        }
        let last = execution
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let parsed: Option<(f64, String)> =
            serde_json::from_str::<Value>(last).ok().and_then(|v| {
                let score = v.get("score")?.as_f64().filter(|s| s.is_finite())?;
                let reason = v
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                Some((score, reason))
            });
        match parsed {
            Some((score, reason)) => Score::new(score, reason),
            None => self.failure(&format!(
                "printed no JSON score (last line: {:?})",
                tail(last, 120)
            )),
        }
    }
}
