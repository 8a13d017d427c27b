//! Next-token cross-entropy over the marked tokens of right-padded sequences: the loss
//! of pretraining and SFT. Past [`SMALL_LOGITS`] floats of logits it is worked out a
//! few positions at a time, as the RL log-probs are (`batch.rs`).

use super::batch::{
    Chunking, LogprobInputs, SMALL_LOGITS, carry_into_model, chunk_positions, to_tensor,
};
use super::recompute::{self, Recompute};
use crate::model::{Transformer, position_ids_from_mask};
use anyhow::Result;
use tch::{Kind, Tensor};

/// Sums of the next-token loss over the marked target tokens of a right-padded batch.
pub struct TokenLoss {
    /// Sum of cross-entropy over target tokens (with gradient).
    pub sum: Tensor,
    pub tokens: f64,
    /// Target tokens the model ranks first.
    pub correct: f64,
    /// Past [`SMALL_LOGITS`], `sum` is a leaf and these push its gradient through the
    /// head chunk by chunk (as [`CompletionForward`] does).
    chunked: Option<ChunkedLoss>,
    recompute: Option<Recompute>,
}

struct ChunkedLoss {
    /// The hidden states still attached to the model, and the same as a leaf.
    attached: Tensor,
    hidden: Tensor,
    inputs: LogprobInputs,
    weight: Tensor,
}

impl TokenLoss {
    /// `loss.backward()` for a loss built on `sum`, through the chunks of the head and
    /// checkpointed layers too. Use it instead of `loss.backward()`.
    pub fn backward(&self, model: &Transformer, loss: &Tensor) {
        loss.backward();
        if let Some(chunked) = &self.chunked {
            let grad = self.sum.grad();
            if grad.defined() {
                let ChunkedLoss {
                    attached,
                    hidden,
                    inputs,
                    weight,
                } = chunked;
                // d sum / d log-prob = −weight, times what the loss made of `sum`.
                inputs.push_through_head(model, hidden, &(-weight * &grad));
                carry_into_model(attached, hidden);
            }
        }
        if let Some(recompute) = &self.recompute {
            recompute.backward(model);
        }
    }
}

/// Next-token cross-entropy for `sequences`; `loss_mask[i][t]` = 1 when token t of
/// sequence i is a target (the first token never is: nothing predicts it). With
/// `checkpointing`, run the backward through [`TokenLoss::backward`].
pub fn next_token_loss(
    model: &Transformer,
    sequences: &[Vec<i64>],
    loss_mask: &[Vec<u8>],
    checkpointing: bool,
) -> Result<TokenLoss> {
    let chunking = Chunking {
        step: chunk_positions(sequences.len() as i64, model.config.vocab_size as i64),
        whole_up_to: SMALL_LOGITS,
        checkpointing,
    };
    next_token_loss_in_chunks(model, sequences, loss_mask, chunking)
}

fn next_token_loss_in_chunks(
    model: &Transformer,
    sequences: &[Vec<i64>],
    loss_mask: &[Vec<u8>],
    chunking: Chunking,
) -> Result<TokenLoss> {
    let checkpointing = chunking.checkpointing;
    let device = model.device();
    let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut real, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for (sequence, mask) in sequences.iter().zip(loss_mask) {
        let pad = width - sequence.len();
        ids.extend(sequence.iter().copied().chain(std::iter::repeat_n(0, pad)));
        real.extend(std::iter::repeat_n(1i64, sequence.len()).chain(std::iter::repeat_n(0, pad)));
        targets.extend(
            mask.iter()
                .map(|&m| i64::from(m))
                .chain(std::iter::repeat_n(0, pad)),
        );
    }
    let rows = sequences.len();
    let ids = to_tensor(ids, rows, device);
    let real = to_tensor(real, rows, device);
    let targets = to_tensor(targets, rows, device).narrow(1, 1, width as i64 - 1);
    let positions = position_ids_from_mask(&real);
    let (hidden, recompute) =
        recompute::hidden_states(model, &ids, &positions, &real, checkpointing)?;
    let vocab = model.config.vocab_size as i64;
    if rows as i64 * (width as i64 - 1) * vocab > chunking.whole_up_to {
        let next = ids.narrow(1, 1, width as i64 - 1);
        let weight = targets.to_kind(Kind::Float);
        let attached = hidden.narrow(1, 0, width as i64 - 1);
        return Ok(chunked_loss(
            model,
            attached,
            next,
            weight,
            chunking.step,
            recompute,
        ));
    }
    // The head over every position, then the last dropped: the same float path as
    // before checkpointing existed (narrowing first changes the product's rounding,
    // and the demo's pretrain → SFT → GRPO chain swung from 89.6% to 57.6% on it).
    let logits = model.logits(&hidden).narrow(1, 0, width as i64 - 1);
    let logits = logits.to_kind(Kind::Float);
    let next = ids.narrow(1, 1, width as i64 - 1);
    let logprobs = logits.log_softmax(-1, Kind::Float);
    let nll = -logprobs
        .gather(-1, &next.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let weight = targets.to_kind(Kind::Float);
    let correct = logits
        .argmax(-1, false)
        .eq_tensor(&next)
        .to_kind(Kind::Float)
        .g_mul(&weight)
        .sum(Kind::Double)
        .double_value(&[]);
    Ok(TokenLoss {
        sum: (nll * &weight).sum(Kind::Float),
        tokens: weight.sum(Kind::Double).double_value(&[]),
        correct,
        chunked: None,
        recompute,
    })
}

/// The next-token loss a few positions at a time (`step`), without gradient; with
/// gradient on, `sum` is a leaf that [`TokenLoss::backward`] carries into the model.
fn chunked_loss(
    model: &Transformer,
    attached: Tensor,
    next: Tensor,
    weight: Tensor,
    step: i64,
    recompute: Option<Recompute>,
) -> TokenLoss {
    let inputs = LogprobInputs {
        targets: next,
        temperature: 1.0,
        step,
    };
    let hidden = attached.detach();
    let (mut total, mut correct) = (0.0, 0.0);
    tch::no_grad(|| {
        for (start, n) in inputs.chunks(&hidden) {
            let (logprobs, log_softmax) = inputs.chunk(model, &hidden, start, n);
            let weight = weight.narrow(1, start, n);
            total -= (logprobs * &weight).sum(Kind::Double).double_value(&[]);
            let targets = inputs.targets.narrow(1, start, n);
            correct += (log_softmax
                .argmax(-1, false)
                .eq_tensor(&targets)
                .to_kind(Kind::Float)
                * &weight)
                .sum(Kind::Double)
                .double_value(&[]);
        }
    });
    let tokens = weight.sum(Kind::Double).double_value(&[]);
    let sum = Tensor::from(total as f32).to_device(hidden.device());
    let chunked = attached.requires_grad().then(|| ChunkedLoss {
        attached,
        hidden: hidden.set_requires_grad(true),
        inputs,
        weight,
    });
    TokenLoss {
        sum: if chunked.is_some() {
            sum.set_requires_grad(true)
        } else {
            sum
        },
        tokens,
        correct,
        chunked,
        recompute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::batch::sorted_gradients;
    use tch::Device;

    /// SFT's loss with activation checkpointing, in chunks of the vocabulary-wide
    /// logits, and both: the same value and gradients.
    #[test]
    fn checkpointed_next_token_loss_gives_the_plain_gradients() {
        use crate::model::{Model, ModelConfig};
        let config = ModelConfig::tiny_qwen2(40, 16, 3, 4);
        let model = Model::random(&config, Device::Cpu, crate::types::Dtype::F32, 2).unwrap();
        let sequences = vec![vec![1, 5, 9, 3, 7, 2], vec![4, 4, 8]];
        let masks = vec![vec![0, 0, 1, 1, 1, 1], vec![0, 1, 1]];
        let run = |checkpointing: bool, step: i64, whole_up_to: i64| {
            for (_, mut variable) in model.vs.variables() {
                variable.zero_grad();
            }
            let chunking = Chunking {
                step,
                whole_up_to,
                checkpointing,
            };
            let loss = next_token_loss_in_chunks(&model.transformer, &sequences, &masks, chunking)
                .unwrap();
            assert_eq!(loss.recompute.is_some(), checkpointing);
            assert_eq!(loss.chunked.is_some(), whole_up_to == 0);
            loss.backward(&model.transformer, &(&loss.sum / loss.tokens));
            (loss.sum.double_value(&[]), sorted_gradients(&model))
        };
        let (plain_loss, plain) = run(false, 1, i64::MAX);
        // Checkpointed; in chunks of 1 and 2 positions; both.
        for (checkpointing, step, whole_up_to) in [
            (true, 1, i64::MAX),
            (false, 1, 0),
            (false, 2, 0),
            (true, 2, 0),
        ] {
            let (loss, other) = run(checkpointing, step, whole_up_to);
            let at = format!("checkpointing {checkpointing}, chunks of {step} ({whole_up_to})");
            assert!(
                (plain_loss - loss).abs() < 1e-5,
                "{at}: {plain_loss} vs {loss}"
            );
            for ((name, a), (_, b)) in other.iter().zip(&plain) {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{at}: gradient of {name} differs by {diff}");
                assert!(b.abs().sum(Kind::Float).double_value(&[]) > 0.0 || name.contains("bias"));
            }
        }
    }
}
