//! Math answers: final-answer extraction and equivalence by value.
//!
//! [`score`] = [`extract_answer`] (which final answer did the completion commit to?)
//! then [`answers_match`] (is it the reference's value?). The pieces are small hand
//! parsers: `extract` finds the answer, `normalize` strips LaTeX presentation,
//! `expr` parses and evaluates arithmetic into `value`s (exact rationals where it
//! can), and `equivalence` compares tuples, intervals, sets, lists, equations and
//! numbers.
//!
//! A policy is trained against this reward, so hedging must never pay:
//! - only the answer after the last `</think>` counts, and an unterminated `<think>`
//!   has no answer;
//! - only the last `\boxed{}` counts, and more than [`MAX_DISTINCT_BOXED`] distinct
//!   boxed answers score zero outright;
//! - an answer holding several values (`3 or 4`, `4, 5, 6`, `3 \pm 1`) is a list,
//!   and a list never equals a single-valued reference;
//! - the last-number fallback takes a trailing list (`4, 5, 6`) whole, so listing
//!   candidates at the end of a completion does not pay either.

#[cfg(test)]
mod behaviour_tests;
mod equivalence;
mod expr;
mod extract;
mod normalize;
#[cfg(test)]
mod tests;
mod value;

pub use equivalence::answers_match;
pub use extract::{MAX_DISTINCT_BOXED, extract_answer};

use serde::{Deserialize, Serialize};

/// Settings a task YAML may give under the math reward.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MathOptions {
    /// Relative tolerance for non-integer numbers (two integers always compare
    /// exactly). An absolute 1e-9 applies when one side is exactly zero.
    #[serde(deserialize_with = "crate::config::checks::non_negative_f64")]
    pub tolerance: f64,
    /// Take the last number in the text when no explicit answer marker exists.
    pub last_number_fallback: bool,
}

impl Default for MathOptions {
    fn default() -> Self {
        Self {
            tolerance: 1e-6,
            last_number_fallback: true,
        }
    }
}

/// Which extraction rule produced the answer, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractionRule {
    /// The last `\boxed{…}` / `\fbox{…}`.
    Boxed,
    /// GSM8K style `#### 42`.
    Hashes,
    /// The last `<answer>…</answer>`.
    AnswerTag,
    /// "The (final) answer is X" / "Answer: X".
    AnswerPhrase,
    /// The last number in the text (optional fallback).
    LastNumber,
}

impl ExtractionRule {
    pub fn label(self) -> &'static str {
        match self {
            Self::Boxed => "boxed",
            Self::Hashes => "####",
            Self::AnswerTag => "<answer>",
            Self::AnswerPhrase => "\"answer is\"",
            Self::LastNumber => "last number",
        }
    }
}

/// A final answer and the rule that found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub answer: String,
    pub rule: ExtractionRule,
}

/// Why a completion has no usable final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    NotFound,
    /// `<think>` was opened but never closed: everything is scratch work.
    UnterminatedThink,
    /// This many distinct boxed answers: the completion hedges.
    TooManyBoxed(usize),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => write!(f, "no final answer found"),
            Self::UnterminatedThink => write!(f, "no final answer (unterminated <think>)"),
            Self::TooManyBoxed(n) => write!(f, "too many boxed answers ({n} distinct)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MathScore {
    pub correct: bool,
    pub extracted: Option<String>,
    pub rule: Option<ExtractionRule>,
    pub reason: String,
}

/// Scores one completion against a reference answer.
///
/// The reference may be a bare answer (`72`, `\frac{1}{2}`) or a full reference
/// solution: its last `\boxed{}`, else its `#### …` line, is used.
pub fn score(completion: &str, reference: &str, options: &MathOptions) -> MathScore {
    let reference = extract::reference_answer(reference);
    match extract_answer(completion, options) {
        Err(why) => MathScore {
            correct: false,
            extracted: None,
            rule: None,
            reason: why.to_string(),
        },
        Ok(Extracted { answer, rule }) => {
            let correct = answers_match(&answer, reference, options);
            let (a, r) = (clip(&answer), clip(reference));
            let reason = if correct {
                format!("{} answer {a} matches {r}", rule.label())
            } else {
                format!("answer {a} ({}) != {r}", rule.label())
            };
            MathScore {
                correct,
                extracted: Some(answer),
                rule: Some(rule),
                reason,
            }
        }
    }
}

/// Keeps reasons short when a model emits a huge answer.
fn clip(s: &str) -> String {
    const MAX_CHARS: usize = 60;
    let s = s.trim();
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}
