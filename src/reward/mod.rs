//! Reward functions: (task record, prompt, completion) → score and a short reason.
//!
//! Rewards see strings and records, never tensors. A task combines several with
//! weights; a batch is scored in parallel with rayon. Sandbox failures are reported as
//! infrastructure errors, counted apart from wrong answers.

pub mod check;
pub mod code;
pub mod math;
pub mod reasoning;
pub mod reward_model;
pub mod sandbox;
pub mod script;
pub mod text;

use crate::config::task::{Reads, ReasoningTags, RewardKind, RewardSpec, TaskConfig};
use anyhow::Result;
use rayon::prelude::*;
use sandbox::{Limits, Runtime, Sandbox, Verdict};
use serde::Serialize;
use serde_json::Value;

/// What a reward function is shown.
#[derive(Clone, Copy)]
pub struct Sample<'a> {
    /// The task record (its fields, e.g. the reference answer or the tests).
    pub record: &'a Value,
    /// The prompt as the task wrote it (without the chat template).
    pub prompt: &'a str,
    /// The chat-templated text the model continued from (the prompt when unknown): a
    /// template can open the reasoning block there.
    pub chat_prompt: &'a str,
    /// What the reward reads (its `reads` key): the answer after the reasoning block
    /// (by default), or the whole completion.
    pub completion: &'a str,
    /// The reasoning block, tags included; empty when there is none.
    pub reasoning: &'a str,
    /// Completion length in tokens (for length shaping), reasoning included.
    pub completion_tokens: usize,
}

impl<'a> Sample<'a> {
    /// A whole completion; [`RewardSet::score_batch`] shows each reward its part.
    pub fn new(
        record: &'a Value,
        prompt: &'a str,
        completion: &'a str,
        completion_tokens: usize,
    ) -> Self {
        Self {
            record,
            prompt,
            chat_prompt: prompt,
            completion,
            reasoning: "",
            completion_tokens,
        }
    }

    /// The same sample, continued from `chat_prompt`.
    pub fn after(self, chat_prompt: &'a str) -> Self {
        Self {
            chat_prompt,
            ..self
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub value: f64,
    pub reason: String,
    /// For sandboxed rewards: how the program ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The grader failed, not the model: never mistake this for a wrong answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infra_error: Option<String>,
}

impl Score {
    pub fn new(value: f64, reason: impl Into<String>) -> Self {
        Self {
            value,
            reason: reason.into(),
            verdict: None,
            infra_error: None,
        }
    }

    /// The score, when the grader did not fail: the only value means and totals use.
    pub fn graded_value(&self) -> Option<f64> {
        self.infra_error.is_none().then_some(self.value)
    }

    /// The grader failed (missing field, broken script, sandbox error): an
    /// infrastructure error, never a wrong answer. The value 0 is a placeholder that
    /// no total, mean or accuracy uses.
    pub(crate) fn infra(error: impl std::fmt::Display) -> Self {
        let message = error.to_string();
        Self {
            value: 0.0,
            reason: message.clone(),
            verdict: None,
            infra_error: Some(message),
        }
    }
}

pub trait RewardFunction: Send + Sync {
    fn score(&self, sample: &Sample) -> Score;

    /// Functions that score a whole batch at once (a reward model on its device)
    /// return the scores here; the others are called per sample, in parallel.
    fn score_all(&self, _samples: &[Sample]) -> Option<Vec<Score>> {
        None
    }
}

/// A task's reward functions with their names and weights.
pub struct RewardSet {
    pub functions: Vec<(String, f64, Box<dyn RewardFunction>)>,
    /// What each function reads.
    pub reads: Vec<Reads>,
    /// Where the reasoning block of a completion ends.
    pub reasoning: ReasoningTags,
    /// Indices of the gold functions (weight 0 in the total) and of the learned reward
    /// models they watch (the proxy).
    pub gold: Vec<usize>,
    pub proxy: Vec<usize>,
}

/// Scores of one completion: per function, and the weighted sum.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub per_function: Vec<Score>,
    /// The weighted sum of the rewards that count (weight ≠ 0); NaN when one of them
    /// could not be graded: a missing score, which the update leaves out.
    pub total: f64,
    /// Why there is no total: the first grader failure among the rewards that count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ungraded: Option<String>,
    /// Time spent scoring this completion, all functions together.
    pub seconds: f64,
}

impl Scored {
    /// From each function's score and weight. A weight-0 reward (a gold check that is
    /// only logged) never touches the total, even when it failed.
    pub fn new(per_function: Vec<Score>, weights: &[f64], seconds: f64) -> Self {
        let counted = || per_function.iter().zip(weights).filter(|(_, w)| **w != 0.0);
        let ungraded = counted().find_map(|(s, _)| s.infra_error.clone());
        let total = match ungraded {
            Some(_) => f64::NAN,
            None => counted().map(|(s, w)| w * s.value).sum(),
        };
        Self {
            per_function,
            total,
            ungraded,
            seconds,
        }
    }

    /// Whether the rewards that count were all graded.
    pub fn graded(&self) -> bool {
        self.ungraded.is_none()
    }

    /// Solved: the task's first reward, its correctness check, paid in full.
    pub fn solved(&self) -> bool {
        self.per_function
            .first()
            .is_some_and(|s| s.infra_error.is_none() && s.value >= 1.0)
    }
}

/// A score that is not a number (a reward script or model that returned NaN or ∞) is a
/// grader failure, never a value to train on.
fn checked(score: Score) -> Score {
    if score.value.is_finite() || score.infra_error.is_some() {
        return score;
    }
    Score {
        verdict: score.verdict,
        ..Score::infra(format!("the reward is {} ({})", score.value, score.reason))
    }
}

impl RewardSet {
    /// Builds the task's rewards; `task_dir` resolves script paths.
    pub fn from_task(task: &TaskConfig, task_dir: &std::path::Path) -> Result<Self> {
        let mut functions = Vec::new();
        for (i, spec) in task.rewards.iter().enumerate() {
            let function = build(spec, task, task_dir)
                .map_err(|e| anyhow::anyhow!("rewards[{i}] ({}): {e:#}", spec.display_name()))?;
            let weight = if spec.gold { 0.0 } else { spec.weight };
            functions.push((spec.display_name(), weight, function));
        }
        let indices = |keep: &dyn Fn(&RewardSpec) -> bool| -> Vec<usize> {
            (0..task.rewards.len())
                .filter(|&i| keep(&task.rewards[i]))
                .collect()
        };
        Ok(Self {
            functions,
            reads: task.rewards.iter().map(RewardSpec::reads).collect(),
            reasoning: task.reasoning.clone(),
            gold: indices(&|s| s.gold),
            proxy: indices(&|s| !s.gold && s.kind == RewardKind::RewardModel),
        })
    }

    pub fn names(&self) -> Vec<&str> {
        self.functions
            .iter()
            .map(|(name, _, _)| name.as_str())
            .collect()
    }

    /// Scores every sample with every function, in parallel over samples. A function
    /// that reads the answer is shown the text after the reasoning block; a completion
    /// whose block was never closed has none and scores 0 there, unseen.
    pub fn score_batch(&self, samples: &[Sample]) -> Vec<Scored> {
        let answers: Vec<Option<Sample>> = samples
            .iter()
            .map(|s| {
                let split = reasoning::split(&self.reasoning, s.chat_prompt, s.completion);
                split.answer.map(|answer| Sample {
                    completion: answer,
                    reasoning: split.reasoning,
                    ..*s
                })
            })
            .collect();
        let shown = |reads: Reads, i: usize| match reads {
            Reads::Completion => Some(samples[i]),
            Reads::Answer => answers[i],
        };
        let batched: Vec<Option<Vec<Score>>> = self
            .functions
            .iter()
            .zip(&self.reads)
            .map(|((_, _, f), &reads)| {
                // Unanswered completions are scored as empty and then overridden.
                let view: Vec<Sample> = (0..samples.len())
                    .map(|i| {
                        shown(reads, i).unwrap_or(Sample {
                            completion: "",
                            ..samples[i]
                        })
                    })
                    .collect();
                f.score_all(&view)
            })
            .collect();
        let weights: Vec<f64> = self.functions.iter().map(|(_, w, _)| *w).collect();
        (0..samples.len())
            .into_par_iter()
            .map(|i| {
                let started = std::time::Instant::now();
                let per_function: Vec<Score> = self
                    .functions
                    .iter()
                    .zip(&self.reads)
                    .zip(&batched)
                    .map(|(((_, _, f), &reads), all)| match (shown(reads, i), all) {
                        (None, _) => self.no_answer(),
                        (Some(_), Some(scores)) => scores[i].clone(),
                        (Some(sample), None) => f.score(&sample),
                    })
                    .map(checked)
                    .collect();
                Scored::new(per_function, &weights, started.elapsed().as_secs_f64())
            })
            .collect()
    }

    fn no_answer(&self) -> Score {
        Score::new(
            0.0,
            format!(
                "no final answer ({} never closed by {})",
                self.reasoning.open, self.reasoning.close
            ),
        )
    }
}

fn build(
    spec: &RewardSpec,
    task: &TaskConfig,
    task_dir: &std::path::Path,
) -> Result<Box<dyn RewardFunction>> {
    let answer_field = || {
        spec.answer_field
            .clone()
            .or_else(|| task.answer_field.clone())
            .unwrap_or_default()
    };
    Ok(match spec.kind {
        RewardKind::Math => {
            let mut options = math::MathOptions::default();
            if let Some(tolerance) = spec.tolerance {
                options.tolerance = tolerance;
            }
            if let Some(fallback) = spec.last_number_fallback {
                options.last_number_fallback = fallback;
            }
            Box::new(text::MathReward {
                answer_field: answer_field(),
                options,
            })
        }
        RewardKind::Exact => Box::new(text::ExactReward {
            answer_field: answer_field(),
        }),
        RewardKind::Format => Box::new(text::RegexReward::format(
            spec.pattern.as_deref(),
            &task.reasoning,
        )?),
        RewardKind::Regex => Box::new(text::RegexReward::new(
            spec.pattern.as_deref().unwrap_or_default(),
        )?),
        RewardKind::Overlong => Box::new(text::OverlongPenalty {
            max_length: spec.max_length.unwrap_or_default(),
            cache_length: spec.cache_length.unwrap_or_default(),
        }),
        RewardKind::Code => Box::new(CodeReward {
            runtime: spec.runtime.unwrap_or_default(),
            limits: limits(spec),
            scoring: spec.scoring.unwrap_or_default(),
            tests_field: spec.tests_field.clone().unwrap_or_else(|| "tests".into()),
            entry_point_field: spec
                .entry_point_field
                .clone()
                .unwrap_or_else(|| "entry_point".into()),
            setup_field: spec.setup_field.clone(),
        }),
        RewardKind::Script => {
            let path = task_dir.join(spec.script.as_deref().unwrap_or(std::path::Path::new("")));
            Box::new(script::ScriptReward::load(
                &path,
                spec.runtime.unwrap_or_default(),
                limits(spec),
            )?)
        }
        RewardKind::RewardModel => {
            let path = task_dir.join(spec.model.as_deref().unwrap_or(std::path::Path::new("")));
            Box::new(reward_model::ModelReward::load(
                &path,
                spec.max_length.unwrap_or(512),
            )?)
        }
    })
}

fn limits(spec: &RewardSpec) -> Limits {
    let mut limits = code::default_limits(spec.runtime.unwrap_or_default());
    if let Some(fuel) = spec.fuel {
        limits.fuel = fuel;
    }
    if let Some(mb) = spec.memory_mb {
        limits.memory_bytes = mb << 20;
    }
    if let Some(seconds) = spec.timeout_s {
        limits.wall_seconds = seconds;
    }
    limits
}

/// Runs the completion's code against the record's tests in the sandbox.
struct CodeReward {
    runtime: Runtime,
    limits: Limits,
    scoring: code::CodeScoring,
    tests_field: String,
    entry_point_field: String,
    setup_field: Option<String>,
}

impl RewardFunction for CodeReward {
    fn score(&self, sample: &Sample) -> Score {
        let Some(program) = code::extract_code(sample.completion) else {
            return Score {
                verdict: Some(Verdict::Error),
                ..Score::new(0.0, "no code found in the completion")
            };
        };
        let tests = match sample.record.get(&self.tests_field) {
            Some(Value::String(test)) => vec![test.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => return Score::infra(format!("the record has no `{}` tests", self.tests_field)),
        };
        let entry_point = sample
            .record
            .get(&self.entry_point_field)
            .and_then(Value::as_str);
        let setup = self
            .setup_field
            .as_ref()
            .and_then(|f| sample.record.get(f))
            .and_then(Value::as_str);
        // Loaded on first use (and cached process-wide), so a task without code
        // samples never compiles CPython.
        let sandbox = match Sandbox::shared(self.runtime) {
            Ok(sandbox) => sandbox,
            Err(error) => return Score::infra(error),
        };
        match code::grade(
            &sandbox,
            &program,
            &tests,
            code::TestContext { entry_point, setup },
            self.scoring,
            &self.limits,
        ) {
            Ok(grade) => Score {
                verdict: Some(grade.verdict),
                ..Score::new(grade.score, grade.reason)
            },
            Err(error) => Score::infra(error),
        }
    }
}
