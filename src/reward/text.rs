//! Rewards on the completion text: math answers, exact match, regex and format checks,
//! and DAPO's soft overlong punishment.

use super::math::{self, MathOptions};
use super::{RewardFunction, Sample, Score};
use crate::config::task::ReasoningTags;
use anyhow::{Context, Result};
use regex::Regex;
use serde_json::Value;

/// A record field as text: strings as they are, numbers printed.
fn field_text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn missing_field(field: &str) -> Score {
    Score::infra(format!("the record has no `{field}` field"))
}

pub struct MathReward {
    pub answer_field: String,
    pub options: MathOptions,
}

impl RewardFunction for MathReward {
    fn score(&self, sample: &Sample) -> Score {
        let Some(reference) = field_text(sample.record, &self.answer_field) else {
            return missing_field(&self.answer_field);
        };
        let result = math::score(sample.completion, &reference, &self.options);
        Score::new(if result.correct { 1.0 } else { 0.0 }, result.reason)
    }
}

/// 1 when the completion, trimmed, equals the reference, trimmed.
pub struct ExactReward {
    pub answer_field: String,
}

impl RewardFunction for ExactReward {
    fn score(&self, sample: &Sample) -> Score {
        let Some(reference) = field_text(sample.record, &self.answer_field) else {
            return missing_field(&self.answer_field);
        };
        if sample.completion.trim() == reference.trim() {
            Score::new(1.0, "exact match")
        } else {
            Score::new(0.0, "differs from the reference")
        }
    }
}

/// 1 when the whole completion matches the pattern.
pub struct RegexReward {
    pattern: Regex,
}

impl RegexReward {
    pub fn new(pattern: &str) -> Result<Self> {
        // Anchored so that a pattern describes the whole completion.
        let anchored = format!("^(?:{pattern})$");
        let pattern =
            Regex::new(&anchored).with_context(|| format!("invalid regex `{pattern}`"))?;
        Ok(Self { pattern })
    }

    /// The given pattern, else: the reasoning block (`<think>…</think>` unless the task
    /// names other tags) then a non-empty answer, and nothing before the block.
    pub fn format(pattern: Option<&str>, tags: &ReasoningTags) -> Result<Self> {
        match pattern {
            Some(p) => Self::new(p),
            None => {
                let (open, close) = (regex::escape(&tags.open), regex::escape(&tags.close));
                let default = format!(r"(?s)^\s*{open}.*?{close}\s*\S.*$");
                Ok(Self {
                    pattern: Regex::new(&default).context("default format pattern")?,
                })
            }
        }
    }
}

impl RewardFunction for RegexReward {
    fn score(&self, sample: &Sample) -> Score {
        if self.pattern.is_match(sample.completion) {
            Score::new(1.0, "matches the format")
        } else {
            Score::new(0.0, "does not match the format")
        }
    }
}

/// DAPO's soft overlong punishment: 0 up to `max_length - cache_length` tokens, then
/// falling linearly to -1 at `max_length`, and -1 beyond.
pub struct OverlongPenalty {
    pub max_length: usize,
    pub cache_length: usize,
}

impl RewardFunction for OverlongPenalty {
    fn score(&self, sample: &Sample) -> Score {
        let length = sample.completion_tokens;
        let soft_start = self.max_length - self.cache_length;
        let value = if length <= soft_start {
            0.0
        } else if length <= self.max_length {
            -((length - soft_start) as f64) / self.cache_length as f64
        } else {
            -1.0
        };
        Score::new(
            value,
            format!(
                "{length} tokens (soft limit {soft_start}, hard {})",
                self.max_length
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(record: &'a Value, completion: &'a str, tokens: usize) -> Sample<'a> {
        Sample::new(record, "", completion, tokens)
    }

    #[test]
    fn format_requires_think_then_answer() {
        let format = RegexReward::format(None, &ReasoningTags::default()).unwrap();
        let record = Value::Null;
        let score = |c: &str| format.score(&sample(&record, c, 0)).value;
        assert_eq!(score("<think>2+2 is 4</think> The answer is 4."), 1.0);
        assert_eq!(score("<think>unfinished"), 0.0);
        assert_eq!(score("The answer is 4."), 0.0);
        assert_eq!(
            score("<think>x</think>"),
            0.0,
            "an answer must follow the thinking"
        );
        assert_eq!(
            score("junk <think>x</think> 4"),
            0.0,
            "nothing before the thinking"
        );
    }

    #[test]
    fn regex_is_anchored() {
        let reward = RegexReward::new(r"\d+").unwrap();
        let record = Value::Null;
        assert_eq!(reward.score(&sample(&record, "42", 0)).value, 1.0);
        assert_eq!(reward.score(&sample(&record, "x42", 0)).value, 0.0);
        assert!(RegexReward::new("(").is_err());
    }

    #[test]
    fn overlong_penalty_is_linear_in_the_soft_zone() {
        let penalty = OverlongPenalty {
            max_length: 100,
            cache_length: 20,
        };
        let record = Value::Null;
        let at = |n| penalty.score(&sample(&record, "", n)).value;
        assert_eq!(at(80), 0.0);
        assert!((at(90) + 0.5).abs() < 1e-12);
        assert_eq!(at(100), -1.0);
        assert_eq!(at(150), -1.0);
    }

    #[test]
    fn math_and_exact_read_the_answer_field() {
        let record = serde_json::json!({"answer": 42, "text": "yes"});
        let math = MathReward {
            answer_field: "answer".into(),
            options: MathOptions::default(),
        };
        assert_eq!(math.score(&sample(&record, "so #### 42", 0)).value, 1.0);
        assert_eq!(math.score(&sample(&record, "so #### 41", 0)).value, 0.0);
        let exact = ExactReward {
            answer_field: "text".into(),
        };
        assert_eq!(exact.score(&sample(&record, " yes\n", 0)).value, 1.0);
        let missing = ExactReward {
            answer_field: "nope".into(),
        }
        .score(&sample(&record, "yes", 0));
        assert!(missing.infra_error.is_some());
    }
}
