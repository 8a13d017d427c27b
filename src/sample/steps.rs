//! The forward passes of sampling: libtorch's (the left-padded prompts in one batch,
//! then steps with its KV cache), or for f32 models on a CPU the plain-Rust
//! [`CpuDecoder`]'s (prompts and steps alike).

use crate::model::cpu_decoder::{CpuCache, CpuDecoder};
use crate::model::cpu_kernels::KernelSet;
use crate::model::{KvCache, Transformer, position_ids_from_mask};
use anyhow::Result;
use tch::{Device, Tensor};

/// Next-token logits [rows, vocab]: a tensor, or floats in row-major order from the CPU
/// decoder with the kernel set it ran, which the pick then uses too.
pub(super) enum Logits {
    Tensor(Tensor),
    Rows(Vec<f32>, KernelSet),
}

/// The prompts after one batched forward: their last logits and the KV cache.
pub(super) struct Prefill {
    pub(super) logits: Tensor,
    pub(super) cache: KvCache,
    /// Real (1) and padding (0) positions [batch, width].
    key_mask: Tensor,
    positions: Tensor,
}

impl Prefill {
    pub(super) fn run(
        model: &Transformer,
        prompts: &[Vec<i64>],
        new_tokens: usize,
    ) -> Result<Self> {
        let (ids, key_mask) = left_pad(prompts, model.device());
        let positions = position_ids_from_mask(&key_mask);
        let width = ids.size()[1] as usize;
        let mut cache = KvCache::with_capacity(model.config.num_hidden_layers, width + new_tokens);
        let hidden = model.hidden_states(&ids, &positions, &key_mask, Some(&mut cache))?;
        // Only the last position's logits are needed.
        let logits = model.logits(&hidden.select(1, -1));
        Ok(Self {
            logits,
            cache,
            key_mask,
            positions,
        })
    }
}

/// Left-pads prompts: ids [batch, width] and the mask of real tokens.
fn left_pad(prompts: &[Vec<i64>], device: Device) -> (Tensor, Tensor) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut mask = Vec::with_capacity(prompts.len() * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).reshape(shape).to_device(device),
        Tensor::from_slice(&mask).reshape(shape).to_device(device),
    )
}

pub(super) trait DecodeSteps {
    /// Keeps batch rows `keep` of `active` and feeds them `tokens`; returns their
    /// next-token logits.
    fn next(&mut self, active: &[usize], keep: &[usize], tokens: &[i64]) -> Result<Logits>;
}

pub(super) struct LibtorchSteps<'m> {
    model: &'m Transformer,
    cache: KvCache,
    key_mask: Tensor,
    /// Position of each batch row's next token.
    positions: Tensor,
}

impl<'m> LibtorchSteps<'m> {
    pub(super) fn new(model: &'m Transformer, prefill: Prefill) -> Self {
        Self {
            model,
            cache: prefill.cache,
            key_mask: prefill.key_mask,
            positions: prefill.positions.select(1, -1) + 1,
        }
    }
}

impl DecodeSteps for LibtorchSteps<'_> {
    fn next(&mut self, active: &[usize], keep: &[usize], tokens: &[i64]) -> Result<Logits> {
        let device = self.key_mask.device();
        if keep.len() < active.len() {
            let rows: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
            let rows = Tensor::from_slice(&rows).to_device(device);
            self.cache.select_rows(&rows);
            self.key_mask = self.key_mask.index_select(0, &rows);
            self.positions = self.positions.index_select(0, &rows);
        }
        let new_column = self.key_mask.ones_like().narrow(1, 0, 1);
        self.key_mask = Tensor::cat(&[&self.key_mask, &new_column], 1);
        let ids = Tensor::from_slice(tokens).to_device(device).unsqueeze(1);
        let positions = self.positions.unsqueeze(1);
        let logits = self
            .model
            .forward(&ids, &positions, &self.key_mask, Some(&mut self.cache))?
            .select(1, -1);
        self.positions += 1;
        Ok(Logits::Tensor(logits))
    }
}

pub(super) struct CpuSteps<'d> {
    pub(super) decoder: &'d CpuDecoder<'d>,
    pub(super) cache: CpuCache,
}

/// Prompt tokens fed to the CPU decoder at once, which bounds the activations' memory;
/// longer batches go in pieces (a row continues where its last piece ended).
const PROMPT_TOKENS_PER_FEED: usize = 4096;

impl CpuSteps<'_> {
    /// Feeds every prompt, prompt i to cache row i; returns their next-token logits.
    pub(super) fn prompts(&mut self, prompts: &[Vec<i64>]) -> Result<Logits> {
        let mut logits = Vec::new();
        // The pieces of the next feed: row, tokens, and whether they end the prompt.
        let mut feed: Vec<(usize, &[i64], bool)> = Vec::new();
        let mut room = PROMPT_TOKENS_PER_FEED;
        for (row, prompt) in prompts.iter().enumerate() {
            let mut rest = prompt.as_slice();
            while !rest.is_empty() {
                let (piece, after) = rest.split_at(rest.len().min(room));
                feed.push((row, piece, after.is_empty()));
                (rest, room) = (after, room - piece.len());
                if room == 0 || (rest.is_empty() && row + 1 == prompts.len()) {
                    let rows: Vec<usize> = feed.iter().map(|piece| piece.0).collect();
                    let tokens: Vec<&[i64]> = feed.iter().map(|piece| piece.1).collect();
                    let out = self.decoder.feed(&mut self.cache, &rows, &tokens)?;
                    let vocab = out.len() / rows.len();
                    for (piece, row_logits) in feed.iter().zip(out.chunks_exact(vocab)) {
                        if piece.2 {
                            logits.extend_from_slice(row_logits);
                        }
                    }
                    (feed, room) = (Vec::new(), PROMPT_TOKENS_PER_FEED);
                }
            }
        }
        Ok(Logits::Rows(logits, self.decoder.kernels()))
    }
}

impl DecodeSteps for CpuSteps<'_> {
    fn next(&mut self, active: &[usize], keep: &[usize], tokens: &[i64]) -> Result<Logits> {
        let rows: Vec<usize> = keep.iter().map(|&row| active[row]).collect();
        let tokens: Vec<&[i64]> = tokens.iter().map(std::slice::from_ref).collect();
        let logits = self.decoder.feed(&mut self.cache, &rows, &tokens)?;
        Ok(Logits::Rows(logits, self.decoder.kernels()))
    }
}
