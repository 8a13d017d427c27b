//! A completion's reasoning (`<think>…</think>`) apart from its answer.
//!
//! Reasoning models write scratch work in a tagged block, then the answer. Rewards
//! grade the answer: a guess tried and dropped while thinking must not count, and a
//! completion that never closes its block (cut off by the length limit, or stopped
//! early) has no answer at all. Templates of R1 distills and of Qwen3 in thinking mode
//! can open the block in the generation prompt, so the completion then starts inside it.
//!
//! The split is at the last closing tag: whatever comes before it is reasoning, so a
//! tag written twice cannot smuggle scratch work into the answer.

pub use crate::config::task::ReasoningTags;

/// A completion cut in two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split<'a> {
    /// The reasoning, tags included; empty when the completion has none.
    pub reasoning: &'a str,
    /// The text after the block; `None` when the block was never closed.
    pub answer: Option<&'a str>,
}

/// Splits `completion`, sampled after `prompt`, at `tags`.
pub fn split<'a>(tags: &ReasoningTags, prompt: &str, completion: &'a str) -> Split<'a> {
    if let Some(at) = completion.rfind(&tags.close) {
        let end = at + tags.close.len();
        let answer = &completion[end..];
        // A block opened again after the last close is never finished.
        let reopened = answer.contains(&tags.open);
        return Split {
            reasoning: &completion[..end],
            answer: (!reopened).then_some(answer),
        };
    }
    if prompt_leaves_open(tags, prompt) || completion.contains(&tags.open) {
        return Split {
            reasoning: completion,
            answer: None,
        };
    }
    Split {
        reasoning: "",
        answer: Some(completion),
    }
}

/// The generation prompt opened a block: the prompt ends with the opening tag.
fn prompt_leaves_open(tags: &ReasoningTags, prompt: &str) -> bool {
    prompt.trim_end().ends_with(&tags.open)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split<'a>(prompt: &str, completion: &'a str) -> Split<'a> {
        super::split(&ReasoningTags::default(), prompt, completion)
    }

    #[test]
    fn the_answer_follows_the_last_closing_tag() {
        let s = split("Q", "<think>maybe 5</think>\nIt is 6.");
        assert_eq!(s.reasoning, "<think>maybe 5</think>");
        assert_eq!(s.answer, Some("\nIt is 6."));
        let s = split("Q", "<think>a</think> 5 </think> 6");
        assert_eq!(s.answer, Some(" 6"));
        assert_eq!(
            split("Q", "just 7"),
            Split {
                reasoning: "",
                answer: Some("just 7")
            }
        );
    }

    #[test]
    fn an_unclosed_block_has_no_answer() {
        assert_eq!(split("Q", "<think>cut off at 5").answer, None);
        assert_eq!(split("Q", "<think>a</think> 5 <think>again").answer, None);
        // R1 distills and Qwen3-Thinking-2507 open the block in the generation prompt.
        let prompt = "<|im_start|>assistant\n<think>\n";
        assert_eq!(split(prompt, "still thinking about 5").answer, None);
        assert_eq!(split(prompt, "so 5</think>\n\n5").answer, Some("\n\n5"));
    }

    #[test]
    fn a_block_closed_in_the_prompt_leaves_the_completion_as_the_answer() {
        // Qwen3 with enable_thinking=false writes an empty block into the prompt.
        let prompt = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
        assert_eq!(split(prompt, "5").answer, Some("5"));
        // An earlier turn's block in the prompt does not open this one.
        let prompt = "user: what is <think>? \nassistant:";
        assert_eq!(split(prompt, "a tag").answer, Some("a tag"));
    }

    #[test]
    fn other_tags_split_the_same_way() {
        let tags = ReasoningTags {
            open: "<reasoning>".into(),
            close: "</reasoning>".into(),
        };
        let s = super::split(&tags, "Q", "<reasoning>x</reasoning>42");
        assert_eq!(s.answer, Some("42"));
    }
}
