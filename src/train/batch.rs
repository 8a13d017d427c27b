//! Turning token sequences into padded tensors and micro-batches, and the completion
//! log-probs under temperature-scaled logits that RL trains on (the next-token loss
//! of pretraining and SFT is `token_loss.rs`).

use super::recompute::{self, Recompute};
pub use crate::data::order::{DataOrder, step_seed};
pub use crate::data::padding::right_pad;
use crate::model::{Transformer, position_ids_from_mask};
use anyhow::Result;
use std::ops::Range;
use tch::{Device, Kind, Tensor};

pub(super) fn to_tensor(values: Vec<i64>, rows: usize, device: Device) -> Tensor {
    Tensor::from_slice(&values)
        .reshape([rows as i64, -1])
        .to_device(device)
}

/// Per-token log-probs of completions (with gradient) and the entropy of each
/// position's distribution (without), both [rows, longest completion], from logits
/// divided by `temperature` as in sampling. Prompts are left-padded, completions
/// right-padded; padding positions hold 0.
pub fn completion_logprobs(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let forward = completion_forward(model, prompts, completions, temperature, false)?;
    Ok((forward.logprobs, forward.entropy))
}

/// What one forward pass over prompts + completions gives the RL losses.
///
/// Beyond [`SMALL_LOGITS`] floats of logits (a 152k vocabulary reaches it at 442
/// tokens), the vocabulary-wide logits are never held for the whole micro-batch:
/// log-probs and entropy are worked out a few positions at a time (the target's logit minus the
/// logsumexp), without gradient. With gradient on, `logprobs` and `hidden` are leaves
/// cut from the model's graph; [`CompletionForward::backward`] runs the loss's
/// backward to them, recomputes each chunk's logits to push the log-probs' gradient
/// through the LM head, then takes the hidden states' gradient through the model once.
/// So the 152k-vocabulary tensors of Qwen live one chunk at a time, in both passes.
pub struct CompletionForward {
    pub logprobs: Tensor,
    pub entropy: Tensor,
    /// Hidden states at the positions that predict each completion token
    /// [rows, longest completion, hidden] (PPO's values read them).
    pub hidden: Tensor,
    /// The hidden states still attached to the model's graph, with what the chunks
    /// need again; `None` without gradient.
    graph: Option<(Tensor, LogprobInputs)>,
    /// With activation checkpointing, the layers to run again in the backward.
    recompute: Option<Recompute>,
}

/// Targets [rows, width] and sampling temperature of the completion log-probs, and
/// how many positions a chunk takes.
pub(super) struct LogprobInputs {
    pub(super) targets: Tensor,
    pub(super) temperature: f64,
    pub(super) step: i64,
}

/// Logits up to this many floats (256 MB) are held whole, under autograd: chunking
/// costs a second pass through the LM head in the backward.
pub(super) const SMALL_LOGITS: i64 = 1 << 26;

fn entropy_of(log_softmax: &Tensor) -> Tensor {
    -(log_softmax.exp() * log_softmax).sum_dim_intlist(-1, false, Kind::Float)
}

/// Positions per chunk: about 2^24 floats (64 MB) of logits at a time.
pub(super) fn chunk_positions(rows: i64, vocab: i64) -> i64 {
    ((1 << 24) / (rows * vocab).max(1)).max(1)
}

impl LogprobInputs {
    /// Log-probs [rows, n] of the targets at positions `start..start + n` of `hidden`,
    /// and the logits scaled by the temperature minus their logsumexp.
    pub(super) fn chunk(
        &self,
        model: &Transformer,
        hidden: &Tensor,
        start: i64,
        n: i64,
    ) -> (Tensor, Tensor) {
        // Contiguous, so libtorch runs one matrix product for the whole chunk: for a
        // strided input and weights that need no gradient (the frozen reference) it
        // broadcasts the LM head into a batched product per row instead, reading all
        // 545 MB of Qwen's head once per row (a 0.5B reference forward took 1.5x as long).
        let logits = model
            .logits(&hidden.narrow(1, start, n).contiguous())
            .to_kind(Kind::Float)
            / self.temperature;
        let log_softmax = &logits - logits.logsumexp(&[-1i64][..], true);
        let targets = self.targets.narrow(1, start, n).unsqueeze(-1);
        let logprobs = log_softmax.gather(-1, &targets, false).squeeze_dim(-1);
        (logprobs, log_softmax)
    }

    /// Accumulates in `hidden` (a leaf) the gradient of Σ log-probs · `grad`
    /// ([rows, width]), recomputing the head's logits one chunk at a time.
    pub(super) fn push_through_head(&self, model: &Transformer, hidden: &Tensor, grad: &Tensor) {
        for (start, n) in self.chunks(hidden) {
            let (logprobs, _) = self.chunk(model, hidden, start, n);
            (logprobs * grad.narrow(1, start, n))
                .sum(Kind::Float)
                .backward();
        }
    }

    pub(super) fn chunks(&self, hidden: &Tensor) -> impl Iterator<Item = (i64, i64)> {
        let (width, step) = (hidden.size()[1], self.step);
        (0..width)
            .step_by(step as usize)
            .map(move |start| (start, step.min(width - start)))
    }
}

impl CompletionForward {
    /// `loss.backward()`, then the gradients it left on `logprobs` and `hidden` carried
    /// into the model's weights (see the type's comment). Use this instead of
    /// `loss.backward()` for any loss built on this forward.
    pub fn backward(&self, model: &Transformer, loss: &Tensor) {
        loss.backward();
        if let Some((attached, inputs)) = &self.graph {
            let grad = self.logprobs.grad();
            if grad.defined() {
                inputs.push_through_head(model, &self.hidden, &grad);
            }
            carry_into_model(attached, &self.hidden);
        }
        if let Some(recompute) = &self.recompute {
            recompute.backward(model);
        }
    }
}

/// Carries the gradient left on the leaf `hidden` into the model through `attached`,
/// the same hidden states still on the model's graph.
pub(super) fn carry_into_model(attached: &Tensor, hidden: &Tensor) {
    let grad = hidden.grad();
    if grad.defined() {
        (attached * grad).sum(Kind::Float).backward();
    }
}

pub fn completion_forward(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    temperature: f64,
    checkpointing: bool,
) -> Result<CompletionForward> {
    let rows = prompts.len() as i64;
    let step = chunk_positions(rows, model.config.vocab_size as i64);
    let chunking = Chunking {
        step,
        whole_up_to: SMALL_LOGITS,
        checkpointing,
    };
    forward_in_chunks(model, prompts, completions, temperature, chunking)
}

/// How [`forward_in_chunks`] saves memory: positions per logits chunk, the logits
/// size held whole, and activation checkpointing.
#[derive(Clone, Copy)]
pub(super) struct Chunking {
    pub(super) step: i64,
    pub(super) whole_up_to: i64,
    pub(super) checkpointing: bool,
}

fn forward_in_chunks(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    temperature: f64,
    chunking: Chunking,
) -> Result<CompletionForward> {
    let Chunking {
        step,
        whole_up_to,
        checkpointing,
    } = chunking;
    let (ids, attached, recompute) = completion_hidden(model, prompts, completions, checkpointing)?;
    let (p, c) = (ids.size()[1] - attached.size()[1], attached.size()[1]);
    let inputs = LogprobInputs {
        targets: ids.narrow(1, p, c),
        temperature,
        step,
    };
    let logits_size = attached.size()[0] * c * model.config.vocab_size as i64;
    if logits_size <= whole_up_to {
        // Small enough to hold whole: one pass under autograd, no recomputation.
        let (logprobs, log_softmax) = inputs.chunk(model, &attached, 0, c);
        let entropy = tch::no_grad(|| entropy_of(&log_softmax.detach()));
        return Ok(CompletionForward {
            logprobs,
            entropy,
            hidden: attached,
            graph: None,
            recompute,
        });
    }
    let hidden = attached.detach();
    let (logprobs, entropy): (Vec<Tensor>, Vec<Tensor>) = tch::no_grad(|| {
        inputs
            .chunks(&hidden)
            .map(|(start, n)| {
                let (logprobs, log_softmax) = inputs.chunk(model, &hidden, start, n);
                let entropy =
                    -(log_softmax.exp() * &log_softmax).sum_dim_intlist(-1, false, Kind::Float);
                (logprobs, entropy)
            })
            .unzip()
    });
    let (logprobs, entropy) = (Tensor::cat(&logprobs, 1), Tensor::cat(&entropy, 1));
    if !attached.requires_grad() {
        return Ok(CompletionForward {
            logprobs,
            entropy,
            hidden,
            graph: None,
            recompute,
        });
    }
    Ok(CompletionForward {
        logprobs: logprobs.set_requires_grad(true),
        entropy,
        hidden: hidden.set_requires_grad(true),
        graph: Some((attached, inputs)),
        recompute,
    })
}

/// The packed ids [rows, prompt + completion width] and the hidden states at the
/// positions that predict each completion token [rows, completion width, hidden],
/// with the layers to run again when `checkpointing`.
pub fn completion_hidden(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    checkpointing: bool,
) -> Result<(Tensor, Tensor, Option<Recompute>)> {
    let device = model.device();
    let prompt_width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let completion_width = completions
        .iter()
        .map(|c| c.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut ids, mut real) = (Vec::new(), Vec::new());
    for (prompt, completion) in prompts.iter().zip(completions) {
        let left = prompt_width - prompt.len();
        let right = completion_width - completion.len();
        ids.extend(
            std::iter::repeat_n(0, left)
                .chain(prompt.iter().copied())
                .chain(completion.iter().copied())
                .chain(std::iter::repeat_n(0, right)),
        );
        real.extend(
            std::iter::repeat_n(0i64, left)
                .chain(std::iter::repeat_n(1, prompt.len() + completion.len()))
                .chain(std::iter::repeat_n(0, right)),
        );
    }
    let rows = prompts.len();
    let ids = to_tensor(ids, rows, device);
    let real = to_tensor(real, rows, device);
    let positions = position_ids_from_mask(&real);
    let (hidden, recompute) =
        recompute::hidden_states(model, &ids, &positions, &real, checkpointing)?;
    let (p, c) = (prompt_width as i64, completion_width as i64);
    Ok((ids, hidden.narrow(1, p - 1, c), recompute))
}

/// Consecutive micro-batches over sequences of `sizes` (prompt and completion
/// lengths; left- and right-padded, a micro-batch is as wide as its longest prompt
/// plus its longest completion): at most `rows` sequences each and, when `max_tokens`
/// is not 0, at most `max_tokens` padded tokens. A sequence over the budget goes alone.
pub fn micro_batches(
    sizes: &[(usize, usize)],
    rows: usize,
    max_tokens: usize,
) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut widest) = (0, (0, 0));
    for (i, &(prompt, completion)) in sizes.iter().enumerate() {
        let grown = (widest.0.max(prompt), widest.1.max(completion));
        let count = i - start + 1;
        let padded = count * (grown.0 + grown.1);
        if i > start && (count > rows || (max_tokens > 0 && padded > max_tokens)) {
            batches.push(start..i);
            (start, widest) = (i, (prompt, completion));
        } else {
            widest = grown;
        }
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// [rows, width] float mask with `lengths[i]` leading ones in row i.
pub fn length_mask(lengths: &[usize], width: usize, device: Device) -> Tensor {
    let values: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..width).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_slice(&values)
        .reshape([lengths.len() as i64, width as i64])
        .to_device(device)
}

/// Right-pads rows of floats into a [rows, width] tensor.
pub fn padded_floats(rows: &[&[f32]], width: usize, device: Device) -> Tensor {
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|row| {
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, width - row.len()))
        })
        .collect();
    Tensor::from_slice(&values)
        .reshape([rows.len() as i64, width as i64])
        .to_device(device)
}

/// Every variable's gradient, by name, for comparing two backward passes.
#[cfg(test)]
pub(super) fn sorted_gradients(model: &crate::model::Model) -> Vec<(String, Tensor)> {
    let mut grads: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(name, v)| (name, v.grad().copy()))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_logprobs_give_the_full_vocabulary_paths_values_and_gradients() {
        use crate::model::{Model, ModelConfig};
        let config = ModelConfig::tiny_qwen2(50, 16, 2, 4);
        let model = Model::random(&config, Device::Cpu, crate::types::Dtype::F32, 1).unwrap();
        let prompts: [&[i64]; 3] = [&[3, 4, 5], &[7], &[1, 2]];
        let completions: [&[i64]; 3] = [&[9, 8, 7, 6, 5, 4, 3], &[11, 12], &[13, 14, 15, 16]];
        let (temperature, lengths) = (0.7, [7, 2, 4]);
        let weights = Tensor::from_slice(&[0.3f32, -1.2, 0.5, 2.0, -0.1, 0.7, 1.1])
            .unsqueeze(0)
            .repeat([3, 1]);
        let mask = length_mask(&lengths, 7, Device::Cpu);
        let gradients = |loss_of: &dyn Fn() -> (Tensor, Tensor)| {
            for (_, mut variable) in model.vs.variables() {
                variable.zero_grad();
            }
            let (logprobs, entropy) = loss_of();
            (logprobs, entropy, sorted_gradients(&model))
        };
        // Today's path: the whole [rows, width, vocab] log-softmax under autograd.
        let (full_logprobs, full_entropy, full) = gradients(&|| {
            let (ids, hidden, _) =
                completion_hidden(&model.transformer, &prompts, &completions, false).unwrap();
            let c = hidden.size()[1];
            let targets = ids.narrow(1, ids.size()[1] - c, c).unsqueeze(-1);
            let lsm =
                (model.transformer.logits(&hidden) / temperature).log_softmax(-1, Kind::Float);
            let logprobs = lsm.gather(-1, &targets, false).squeeze_dim(-1);
            let entropy = -(lsm.exp() * &lsm).sum_dim_intlist(-1, false, Kind::Float);
            (&logprobs * &weights * &mask).sum(Kind::Float).backward();
            (logprobs.detach(), entropy.detach())
        });
        let cases = [
            (1, 0, false),
            (3, 0, false),
            (7, 0, false),
            (7, i64::MAX, false),
        ];
        // The same with activation checkpointing, chunked and whole.
        let cases = cases.into_iter().chain([(3, 0, true), (7, i64::MAX, true)]);
        for (step, whole_up_to, checkpointing) in cases {
            let chunking = Chunking {
                step,
                whole_up_to,
                checkpointing,
            };
            let (logprobs, entropy, chunked) = gradients(&|| {
                let forward = forward_in_chunks(
                    &model.transformer,
                    &prompts,
                    &completions,
                    temperature,
                    chunking,
                )
                .unwrap();
                let loss = (&forward.logprobs * &weights * &mask).sum(Kind::Float);
                forward.backward(&model.transformer, &loss);
                (forward.logprobs.detach(), forward.entropy.detach())
            });
            let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
            assert!(diff(&logprobs, &full_logprobs) < 1e-5, "step {step}");
            assert!(diff(&entropy, &full_entropy) < 1e-5, "step {step}");
            for ((name, a), (_, b)) in chunked.iter().zip(&full) {
                assert!(
                    diff(a, b) < 1e-5,
                    "step {step}: gradient of {name} differs by {}",
                    diff(a, b)
                );
                assert!(
                    b.abs().sum(Kind::Float).double_value(&[]) > 0.0 || name.contains("bias"),
                    "{name}"
                );
            }
        }
    }

    /// A frozen copy of the policy (the KL reference) gives the policy's log-probs
    /// bit for bit, so the KL starts at exactly 0. (The head's product for frozen
    /// weights was also 1.5x slower at 0.5B before `chunk` made its input contiguous;
    /// only a benchmark shows that.)
    #[test]
    fn a_frozen_copy_gives_the_policys_logprobs_exactly() {
        use crate::model::{Model, ModelConfig};
        let config = ModelConfig::tiny_qwen2(300, 32, 2, 4);
        let policy = Model::random(&config, Device::Cpu, crate::types::Dtype::F32, 2).unwrap();
        let mut frozen = Model::random(&config, Device::Cpu, crate::types::Dtype::F32, 9).unwrap();
        frozen.vs.copy(&policy.vs).unwrap();
        frozen.vs.freeze();
        let prompts: Vec<Vec<i64>> = (0..6)
            .map(|r| (0..9).map(|t| (r * 31 + t * 7) % 300).collect())
            .collect();
        let completions: Vec<Vec<i64>> = (0..6)
            .map(|r| (0..13).map(|t| (r * 13 + t * 5) % 300).collect())
            .collect();
        let prompts: Vec<&[i64]> = prompts.iter().map(Vec::as_slice).collect();
        let completions: Vec<&[i64]> = completions.iter().map(Vec::as_slice).collect();
        let logprobs = |model: &Model| {
            tch::no_grad(|| completion_logprobs(&model.transformer, &prompts, &completions, 0.9))
                .unwrap()
                .0
        };
        assert!(logprobs(&policy).equal(&logprobs(&frozen)));
    }

    #[test]
    fn micro_batches_respect_rows_and_the_padded_token_budget() {
        let sizes = [(4, 6), (2, 10), (3, 1), (4, 4), (20, 30), (1, 1)];
        let ranges = |rows, tokens| micro_batches(&sizes, rows, tokens);
        assert_eq!(ranges(2, 0), vec![0..2, 2..4, 4..6]);
        // 2 × (4 + 10) = 28 fits 30; adding (3, 1) makes 3 × 14 = 42.
        assert_eq!(ranges(8, 30), vec![0..2, 2..4, 4..5, 5..6]);
        assert_eq!(ranges(8, 0), vec![0..6]);
        assert_eq!(ranges(1, 1), (0..6).map(|i| i..i + 1).collect::<Vec<_>>());
    }

    #[test]
    fn data_order_is_a_permutation_per_epoch_and_reproducible() {
        let mut a = DataOrder::new(10, 3);
        let first: Vec<usize> = (0..10).map(|k| a.get(k)).collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<usize> = (10..20).map(|k| a.get(k)).collect();
        assert_ne!(first, second, "each epoch reshuffles");
        // Random access (as after a resume) gives the same stream.
        let mut b = DataOrder::new(10, 3);
        assert_eq!(b.get(13), second[3]);
        assert_eq!(b.get(2), first[2]);
    }
}
