//! Turning token sequences into padded tensors, and the per-token quantities every
//! stage trains on: next-token cross-entropy (pretrain, SFT) and completion log-probs
//! under temperature-scaled logits (RL).

pub use crate::data::order::{DataOrder, step_seed};
pub use crate::data::padding::right_pad;
use crate::model::{Transformer, position_ids_from_mask};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

fn to_tensor(values: Vec<i64>, rows: usize, device: Device) -> Tensor {
    Tensor::from_slice(&values)
        .reshape([rows as i64, -1])
        .to_device(device)
}

/// Sums of the next-token loss over the marked target tokens of a right-padded batch.
pub struct TokenLoss {
    /// Sum of cross-entropy over target tokens (with gradient).
    pub sum: Tensor,
    pub tokens: f64,
    /// Target tokens the model ranks first.
    pub correct: f64,
}

/// Next-token cross-entropy for `sequences`; `loss_mask[i][t]` = 1 when token t of
/// sequence i is a target (the first token never is: nothing predicts it).
pub fn next_token_loss(
    model: &Transformer,
    sequences: &[Vec<i64>],
    loss_mask: &[Vec<u8>],
) -> Result<TokenLoss> {
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
    let logits = model.forward(&ids, &positions, &real, None)?;
    let logits = logits.narrow(1, 0, width as i64 - 1).to_kind(Kind::Float);
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
    })
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
    let forward = completion_forward(model, prompts, completions, temperature)?;
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
}

/// Targets [rows, width] and sampling temperature of the completion log-probs, and
/// how many positions a chunk takes.
struct LogprobInputs {
    targets: Tensor,
    temperature: f64,
    step: i64,
}

/// Logits up to this many floats (256 MB) are held whole, under autograd: chunking
/// costs a second pass through the LM head in the backward.
const SMALL_LOGITS: i64 = 1 << 26;

fn entropy_of(log_softmax: &Tensor) -> Tensor {
    -(log_softmax.exp() * log_softmax).sum_dim_intlist(-1, false, Kind::Float)
}

/// Positions per chunk: about 2^24 floats (64 MB) of logits at a time.
fn chunk_positions(rows: i64, vocab: i64) -> i64 {
    ((1 << 24) / (rows * vocab).max(1)).max(1)
}

impl LogprobInputs {
    /// Log-probs [rows, n] of the targets at positions `start..start + n` of `hidden`,
    /// and the logits scaled by the temperature minus their logsumexp.
    fn chunk(&self, model: &Transformer, hidden: &Tensor, start: i64, n: i64) -> (Tensor, Tensor) {
        let logits = model
            .logits(&hidden.narrow(1, start, n))
            .to_kind(Kind::Float)
            / self.temperature;
        let log_softmax = &logits - logits.logsumexp(&[-1i64][..], true);
        let targets = self.targets.narrow(1, start, n).unsqueeze(-1);
        let logprobs = log_softmax.gather(-1, &targets, false).squeeze_dim(-1);
        (logprobs, log_softmax)
    }

    fn chunks(&self, hidden: &Tensor) -> impl Iterator<Item = (i64, i64)> {
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
        let Some((attached, inputs)) = &self.graph else {
            return;
        };
        let grad = self.logprobs.grad();
        if grad.defined() {
            for (start, n) in inputs.chunks(&self.hidden) {
                let (logprobs, _) = inputs.chunk(model, &self.hidden, start, n);
                (logprobs * grad.narrow(1, start, n))
                    .sum(Kind::Float)
                    .backward();
            }
        }
        let hidden_grad = self.hidden.grad();
        if hidden_grad.defined() {
            (attached * hidden_grad).sum(Kind::Float).backward();
        }
    }
}

pub fn completion_forward(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    temperature: f64,
) -> Result<CompletionForward> {
    let rows = prompts.len() as i64;
    let step = chunk_positions(rows, model.config.vocab_size as i64);
    forward_in_chunks(model, prompts, completions, temperature, step, SMALL_LOGITS)
}

fn forward_in_chunks(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    temperature: f64,
    step: i64,
    whole_up_to: i64,
) -> Result<CompletionForward> {
    let (ids, attached) = completion_hidden(model, prompts, completions)?;
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
        });
    }
    Ok(CompletionForward {
        logprobs: logprobs.set_requires_grad(true),
        entropy,
        hidden: hidden.set_requires_grad(true),
        graph: Some((attached, inputs)),
    })
}

/// The packed ids [rows, prompt + completion width] and the hidden states at the
/// positions that predict each completion token [rows, completion width, hidden].
pub fn completion_hidden(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
) -> Result<(Tensor, Tensor)> {
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
    let hidden = model.hidden_states(&ids, &positions, &real, None)?;
    let (p, c) = (prompt_width as i64, completion_width as i64);
    Ok((ids, hidden.narrow(1, p - 1, c)))
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
            let mut grads: Vec<(String, Tensor)> = model
                .vs
                .variables()
                .into_iter()
                .map(|(name, v)| (name, v.grad().copy()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (logprobs, entropy, grads)
        };
        // Today's path: the whole [rows, width, vocab] log-softmax under autograd.
        let (full_logprobs, full_entropy, full) = gradients(&|| {
            let (ids, hidden) =
                completion_hidden(&model.transformer, &prompts, &completions).unwrap();
            let c = hidden.size()[1];
            let targets = ids.narrow(1, ids.size()[1] - c, c).unsqueeze(-1);
            let lsm =
                (model.transformer.logits(&hidden) / temperature).log_softmax(-1, Kind::Float);
            let logprobs = lsm.gather(-1, &targets, false).squeeze_dim(-1);
            let entropy = -(lsm.exp() * &lsm).sum_dim_intlist(-1, false, Kind::Float);
            (&logprobs * &weights * &mask).sum(Kind::Float).backward();
            (logprobs.detach(), entropy.detach())
        });
        for (step, whole_up_to) in [(1, 0), (3, 0), (7, 0), (7, i64::MAX)] {
            let (logprobs, entropy, chunked) = gradients(&|| {
                let forward = forward_in_chunks(
                    &model.transformer,
                    &prompts,
                    &completions,
                    temperature,
                    step,
                    whole_up_to,
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
