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
pub struct CompletionForward {
    pub logprobs: Tensor,
    pub entropy: Tensor,
    /// Hidden states at the positions that predict each completion token
    /// [rows, longest completion, hidden] (PPO's values read them).
    pub hidden: Tensor,
}

pub fn completion_forward(
    model: &Transformer,
    prompts: &[&[i64]],
    completions: &[&[i64]],
    temperature: f64,
) -> Result<CompletionForward> {
    let (ids, hidden) = completion_hidden(model, prompts, completions)?;
    let (p, c) = (ids.size()[1] - hidden.size()[1], hidden.size()[1]);
    let logits = model.logits(&hidden).to_kind(Kind::Float);
    let log_softmax = (logits / temperature).log_softmax(-1, Kind::Float);
    let targets = ids.narrow(1, p, c).unsqueeze(-1);
    let logprobs = log_softmax.gather(-1, &targets, false).squeeze_dim(-1);
    let entropy = tch::no_grad(|| {
        let lsm = log_softmax.detach();
        -(lsm.exp() * &lsm).sum_dim_intlist(-1, false, Kind::Float)
    });
    Ok(CompletionForward {
        logprobs,
        entropy,
        hidden,
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
