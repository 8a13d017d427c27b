//! Tokenizers: a model's `tokenizer.json` through HF `tokenizers`, byte-level BPE
//! training for from-scratch models, and the chat template that renders a
//! conversation and marks the assistant tokens SFT trains on.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

pub mod template;
pub use template::{ChatTemplate, Conversation};

/// Special tokens of rlvr's own chat format, added to every tokenizer we train.
pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const SYSTEM: &str = "<|system|>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
pub const END: &str = "<|end|>";
pub const PAD: &str = "<|pad|>";
pub const SPECIAL_TOKENS: &[&str] = &[END_OF_TEXT, PAD, SYSTEM, USER, ASSISTANT, END];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Bytes at the start of `a` and `b` that are equal, cut back to a char boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Chat formats we can render, picked from the special tokens a tokenizer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|user|>text<|end|>` (rlvr's from-scratch models).
    Rlvr,
    /// `<|im_start|>user\ntext<|im_end|>\n` (Qwen and other ChatML models).
    ChatMl,
    /// `<|start_header_id|>user<|end_header_id|>\n\ntext<|eot_id|>` (Llama 3).
    Llama3,
}

impl ChatFormat {
    /// Text before a message's content.
    fn header(self, role: &str) -> String {
        match self {
            Self::Rlvr => format!("<|{role}|>"),
            Self::ChatMl => format!("<|im_start|>{role}\n"),
            Self::Llama3 => format!("<|start_header_id|>{role}<|end_header_id|>\n\n"),
        }
    }

    /// Text after a message's content; the token that ends an assistant turn comes first.
    fn footer(self) -> &'static str {
        match self {
            Self::Rlvr => END,
            Self::ChatMl => "<|im_end|>\n",
            Self::Llama3 => "<|eot_id|>",
        }
    }

    /// The special token that ends an assistant turn (a stop token for sampling).
    pub fn end_token(self) -> &'static str {
        match self {
            Self::Rlvr => END,
            Self::ChatMl => "<|im_end|>",
            Self::Llama3 => "<|eot_id|>",
        }
    }
}

/// A conversation rendered to ids, with the mask of tokens SFT learns from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    pub ids: Vec<i64>,
    /// 1 for assistant content and the token that ends the assistant turn.
    pub assistant_mask: Vec<u8>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The built-in format, used only when the folder ships no chat template.
    pub chat_format: ChatFormat,
    /// The checkpoint's own template (`chat_template.jinja` or tokenizer_config.json).
    pub template: Option<ChatTemplate>,
    /// Extra template variables (`enable_thinking`, …) every rendering passes: a run
    /// config's `chat_template_kwargs`.
    template_kwargs: serde_json::Map<String, serde_json::Value>,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let mut tokenizer = Self::from_inner(inner).with_context(|| path.display().to_string())?;
        if let Some(dir) = path.parent() {
            tokenizer.template = ChatTemplate::find(dir)?;
        }
        Ok(tokenizer)
    }

    /// Where the chat format comes from, for `rlvr inspect` and run logs.
    pub fn template_source(&self) -> String {
        match &self.template {
            Some(t) => format!("chat template from {}", t.origin),
            None => format!(
                "built-in {:?} format (the folder ships no chat template)",
                self.chat_format
            ),
        }
    }

    /// The token that ends an assistant turn: the template's `eos_token` (Qwen's
    /// `<|im_end|>`, Llama 3's `<|eot_id|>`), else the built-in format's.
    pub fn end_of_turn_id(&self) -> Option<i64> {
        let from_template = self
            .template
            .as_ref()
            .and_then(|t| t.special_tokens.get("eos_token"))
            .and_then(|v| v.as_str())
            .and_then(|token| self.token_id(token));
        from_template.or_else(|| self.token_id(self.chat_format.end_token()))
    }

    fn from_inner(inner: tokenizers::Tokenizer) -> Result<Self> {
        let has = |token: &str| inner.token_to_id(token).is_some();
        let chat_format = if has(ASSISTANT) && has(END) {
            ChatFormat::Rlvr
        } else if has("<|im_start|>") && has("<|im_end|>") {
            ChatFormat::ChatMl
        } else if has("<|start_header_id|>") && has("<|eot_id|>") {
            ChatFormat::Llama3
        } else {
            ChatFormat::Rlvr
        };
        Ok(Self {
            inner,
            chat_format,
            template: None,
            template_kwargs: serde_json::Map::new(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| anyhow!("{}: cannot save tokenizer: {e}", path.display()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn token_text(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// Ids of `text`; special-token strings in it map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Text of `ids`; ids outside the vocabulary are an error, not a panic.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size() as i64;
        let ids: Vec<u32> = ids
            .iter()
            .map(|&id| {
                if (0..vocab).contains(&id) {
                    Ok(id as u32)
                } else {
                    Err(anyhow!(
                        "token id {id} is outside the vocabulary (0..{vocab})"
                    ))
                }
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| anyhow!("cannot decode: {e}"))
    }

    /// Text of sampled ids. Checkpoints often pad the embedding past the tokenizer
    /// (Qwen2: 151936 rows for 151665 tokens); ids there have no text and decode to
    /// nothing. Special tokens are left out.
    pub fn decode_completion(&self, ids: &[i64]) -> Result<String> {
        let known = self.vocab_size() as i64;
        let ids: Vec<i64> = ids.iter().copied().filter(|&id| id < known).collect();
        self.decode(&ids, true)
    }

    /// Passes `kwargs` to every later rendering of the chat template. Refused for a
    /// tokenizer without one: the built-in formats have no variables to set.
    pub fn set_template_kwargs(
        &mut self,
        kwargs: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        if self.template.is_none() && !kwargs.is_empty() {
            let keys: Vec<&str> = kwargs.keys().map(String::as_str).collect();
            bail!(
                "chat_template_kwargs ({}) given, but this tokenizer has no chat template \
                 (its built-in {:?} format takes none)",
                keys.join(", "),
                self.chat_format
            );
        }
        self.template_kwargs = kwargs;
        Ok(())
    }

    /// Renders a conversation; with `add_generation_prompt` it ends with the header of
    /// an assistant turn, ready for sampling.
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<RenderedChat> {
        if let Some(template) = &self.template {
            return self.render_with_template(template, messages, add_generation_prompt);
        }
        let mut rendered = RenderedChat {
            ids: Vec::new(),
            assistant_mask: Vec::new(),
        };
        let mut push = |text: &str, learn: bool| -> Result<()> {
            let ids = self.encode(text)?;
            rendered
                .assistant_mask
                .extend(std::iter::repeat_n(u8::from(learn), ids.len()));
            rendered.ids.extend(ids);
            Ok(())
        };
        for (i, message) in messages.iter().enumerate() {
            if !matches!(message.role.as_str(), "system" | "user" | "assistant") {
                bail!(
                    "message {i}: role `{}` is not system, user or assistant",
                    message.role
                );
            }
            let learn = message.role == "assistant";
            push(&self.chat_format.header(&message.role), false)?;
            push(&message.content, learn)?;
            let footer = self.chat_format.footer();
            let end = self.chat_format.end_token();
            push(end, learn)?;
            push(&footer[end.len()..], false)?;
        }
        if add_generation_prompt {
            push(&self.chat_format.header("assistant"), false)?;
        }
        Ok(rendered)
    }

    /// Renders with the checkpoint's template and tokenizes the text as transformers
    /// does (no special tokens added: a template writes its own BOS).
    fn render_with_template(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<RenderedChat> {
        let conversation = Conversation {
            messages: messages
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?,
            add_generation_prompt,
            template_kwargs: self.template_kwargs.clone(),
            ..Conversation::default()
        };
        self.render_conversation(template, &conversation)
    }

    /// A conversation through `template`, with the assistant mask: from `{% generation
    /// %}` blocks where the template has them, otherwise by rendering (see
    /// [`Self::assistant_spans_by_rendering`]).
    pub fn render_conversation(
        &self,
        template: &ChatTemplate,
        conversation: &Conversation,
    ) -> Result<RenderedChat> {
        let rendered = template.render_marked(conversation)?;
        let spans = if template.has_generation_blocks() {
            rendered.assistant_spans.clone()
        } else {
            self.assistant_spans_by_rendering(template, conversation, &rendered.text)?
        };
        let encoding = self
            .inner
            .encode(rendered.text.as_str(), false)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        let assistant_mask = encoding
            .get_offsets()
            .iter()
            // A token counts when it overlaps a span, as transformers marks them (one
            // that starts before the content, "\n<" of "\n<think>", is the model's too).
            .map(|&(start, end)| {
                let overlaps =
                    |s: &std::ops::Range<usize>| start < s.end && end.max(start + 1) > s.start;
                u8::from(spans.iter().any(overlaps))
            })
            .collect();
        Ok(RenderedChat {
            ids,
            assistant_mask,
        })
    }

    /// Assistant turn i starts where the conversation up to it, rendered with a
    /// generation prompt, ends (the text must start with that prefix). It ends where
    /// the conversation up to and including it ends, less trailing whitespace; when
    /// the template renders the turn differently once later turns follow (Qwen3 drops
    /// earlier `<think>` blocks), it ends after the first end-of-turn token instead.
    fn assistant_spans_by_rendering(
        &self,
        template: &ChatTemplate,
        conversation: &Conversation,
        text: &str,
    ) -> Result<Vec<std::ops::Range<usize>>> {
        let end_token = self
            .end_of_turn_id()
            .and_then(|id| self.token_text(id))
            .unwrap_or_default();
        let mut spans = Vec::new();
        for (i, message) in conversation.messages.iter().enumerate() {
            if message.get("role").and_then(|r| r.as_str()) != Some("assistant") {
                continue;
            }
            let upto = |n: usize, generation: bool| Conversation {
                messages: conversation.messages[..n].to_vec(),
                add_generation_prompt: generation,
                continue_final_message: false,
                ..conversation.clone()
            };
            let content = message
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .trim();
            let start = Self::turn_start(template, &upto(i, true), &upto(i, false), content, text)
                .with_context(|| format!("message {i}"))?;
            if conversation.continue_final_message && i + 1 == conversation.messages.len() {
                // The text stops inside this turn.
                spans.push(start..text.len());
                continue;
            }
            let whole = template.render(&upto(i + 1, false))?;
            let shared = self.shared_tokens(&whole, text)?;
            let end = if text.starts_with(&whole) && whole.len() > start {
                start + whole[start..].trim_end().len()
            } else if shared >= start + content.len() {
                // Later turns change what follows (Phi-3 ends the text with an EOS
                // only when the conversation stops here): the turn ends where the two
                // renderings' tokens part, less whitespace.
                start + text[start..shared].trim_end().len()
            } else {
                // The turn itself renders differently once later turns follow (Qwen3
                // drops earlier <think> blocks): it ends after its end-of-turn token.
                match (!end_token.is_empty())
                    .then(|| text[start..].find(&end_token))
                    .flatten()
                {
                    Some(at) => start + at + end_token.len(),
                    None => bail!("message {i}: cannot find where this assistant turn ends"),
                }
            };
            spans.push(start..end);
        }
        Ok(spans)
    }

    /// The bytes of `b` covered by the tokens it shares with `a` from the start: where
    /// two renderings part, at a token boundary (`<|endoftext|>` and `<|user|>` share
    /// their first two bytes, not a token).
    fn shared_tokens(&self, a: &str, b: &str) -> Result<usize> {
        let encode = |text: &str| {
            self.inner
                .encode(text, false)
                .map_err(|e| anyhow!("cannot tokenize: {e}"))
        };
        let (a, b) = (encode(a)?, encode(b)?);
        let same = a
            .get_ids()
            .iter()
            .zip(b.get_ids())
            .take_while(|(x, y)| x == y)
            .count();
        Ok(match same {
            0 => 0,
            n => b.get_offsets()[n - 1].1,
        })
    }

    /// Where an assistant turn's text starts: after the conversation before it rendered
    /// with a generation prompt (where the template ignores add_generation_prompt, at
    /// the turn's content). Where that is not a prefix of the text but the rendering
    /// without the prompt is (R1 distills' generation prompt opens a `<think>` block
    /// that a written turn does not have), after the longest prefix the two share.
    fn turn_start(
        template: &ChatTemplate,
        with_prompt: &Conversation,
        without_prompt: &Conversation,
        content: &str,
        text: &str,
    ) -> Result<usize> {
        let prefix = template.render(with_prompt)?;
        let before = template.render(without_prompt)?;
        if text.starts_with(&prefix) && prefix != before {
            return Ok(prefix.len());
        }
        if text.starts_with(&prefix) {
            return match text[prefix.len()..].find(content) {
                Some(at) if !content.is_empty() => Ok(prefix.len() + at),
                _ => bail!(
                    "the template ignores add_generation_prompt and the turn's content is not in the text; use a template with {{% generation %}} blocks"
                ),
            };
        }
        if text.starts_with(&before) {
            return Ok(common_prefix(&prefix, text).max(before.len()));
        }
        bail!(
            "cannot find where this assistant turn starts (the template renders earlier turns differently); use a template with {{% generation %}} blocks"
        )
    }

    /// `prompt` as the user turn and `reply` as the assistant's, cut to `max_length`
    /// tokens: what a reward model reads, in training and when it scores.
    pub fn render_exchange(
        &self,
        prompt: &str,
        reply: &str,
        max_length: usize,
    ) -> Result<Vec<i64>> {
        let messages = [
            Message {
                role: "user".into(),
                content: prompt.into(),
            },
            Message {
                role: "assistant".into(),
                content: reply.into(),
            },
        ];
        let mut ids = self.render_chat(&messages, false)?.ids;
        ids.truncate(max_length);
        Ok(ids)
    }

    /// Trains a byte-level BPE on `texts`. Digits are split one by one (which helps
    /// small models with arithmetic) and rlvr's chat special tokens are added.
    pub fn train_bpe<I>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = String> + Send,
    {
        if vocab_size < 256 + SPECIAL_TOKENS.len() {
            bail!(
                "vocab_size {vocab_size} is too small for byte-level BPE (at least {})",
                256 + SPECIAL_TOKENS.len()
            );
        }
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials.clone())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ]))));
        inner.with_decoder(Some(byte_level));
        inner
            .train(&mut trainer, texts)
            .map_err(|e| anyhow!("BPE training failed: {e}"))?;
        inner
            .add_special_tokens(specials)
            .map_err(|e| anyhow!("cannot add special tokens: {e}"))?;
        Self::from_inner(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        let corpus =
            (0..200).map(|i| format!("What is {i} plus {}? The answer is {}.", i * 7, i * 8));
        Tokenizer::train_bpe(corpus, 300).unwrap()
    }

    #[test]
    fn bpe_round_trips_text_and_splits_digits() {
        let tokenizer = tiny();
        let text = "What is 123 plus 45? The answer is 168. ünïcode ✓";
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        let pieces: Vec<String> = tokenizer
            .encode("123")
            .unwrap()
            .iter()
            .map(|&i| tokenizer.token_text(i).unwrap())
            .collect();
        assert_eq!(pieces, ["1", "2", "3"]);
        assert!(
            tokenizer
                .decode(&[tokenizer.vocab_size() as i64], false)
                .is_err()
        );
    }

    #[test]
    fn chat_template_masks_assistant_content_and_end_token() {
        let tokenizer = tiny();
        let messages = [
            Message {
                role: "user".into(),
                content: "What is 2 plus 2?".into(),
            },
            Message {
                role: "assistant".into(),
                content: "The answer is 4.".into(),
            },
        ];
        let chat = tokenizer.render_chat(&messages, false).unwrap();
        assert_eq!(chat.ids.len(), chat.assistant_mask.len());
        let learned: Vec<i64> = chat
            .ids
            .iter()
            .zip(&chat.assistant_mask)
            .filter(|(_, m)| **m == 1)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            tokenizer.decode(&learned, false).unwrap(),
            "The answer is 4.<|end|>"
        );
        let all = tokenizer.decode(&chat.ids, false).unwrap();
        assert_eq!(
            all,
            "<|user|>What is 2 plus 2?<|end|><|assistant|>The answer is 4.<|end|>"
        );
        // Rendering piecewise equals tokenizing the whole text at once.
        assert_eq!(tokenizer.encode(&all).unwrap(), chat.ids);

        let prompt = tokenizer.render_chat(&messages[..1], true).unwrap();
        assert!(
            tokenizer
                .decode(&prompt.ids, false)
                .unwrap()
                .ends_with("<|assistant|>")
        );
        assert!(prompt.assistant_mask.iter().all(|&m| m == 0));
        let bad = [Message {
            role: "tool".into(),
            content: "x".into(),
        }];
        assert!(
            tokenizer
                .render_chat(&bad, false)
                .unwrap_err()
                .to_string()
                .contains("message 0")
        );
    }

    #[test]
    fn a_template_folder_renders_and_masks_like_the_builtin_format() {
        let builtin = tiny();
        let mut templated = tiny();
        let mut specials = serde_json::Map::new();
        specials.insert("eos_token".into(), END.into());
        templated.template = Some(ChatTemplate::new(
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}".into(),
            "test".into(),
            Vec::new(),
            specials,
        ));
        let messages = [
            Message {
                role: "user".into(),
                content: "What is 2 plus 2?".into(),
            },
            Message {
                role: "assistant".into(),
                content: "The answer is 4.".into(),
            },
            Message {
                role: "user".into(),
                content: "And 3 plus 3?".into(),
            },
            Message {
                role: "assistant".into(),
                content: "The answer is 6.".into(),
            },
        ];
        for (n, generation) in [(4, false), (3, true), (1, true)] {
            assert_eq!(
                templated.render_chat(&messages[..n], generation).unwrap(),
                builtin.render_chat(&messages[..n], generation).unwrap()
            );
        }
        assert_eq!(templated.end_of_turn_id(), builtin.token_id(END));
    }
}
