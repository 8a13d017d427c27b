//! Activation checkpointing per decoder layer (`train.gradient_checkpointing`).
//!
//! A plain forward under autograd keeps every layer's activations (the MLP's
//! 4864-wide inputs, attention's queries, keys and softmax) until the backward: for
//! a 24-layer model that is most of the memory of a long completion. Here the
//! forward runs the layers without gradient and keeps only each layer's input; the
//! loss's backward stops at the last layer's output, and [`Recompute::backward`]
//! runs each layer again with gradient, last to first, pushing the gradient one
//! layer down at a time. It costs one more forward through the layers.

use crate::model::Transformer;
use crate::model::transformer::LayerInputs;
use anyhow::Result;
use tch::{Kind, Tensor};

/// What the backward needs to run the layers again.
pub struct Recompute {
    /// The embeddings, still attached to the embedding weights.
    embedded: Tensor,
    /// Each layer's input, without gradient.
    inputs: Vec<Tensor>,
    /// The last layer's output: a leaf the loss's backward leaves its gradient on.
    output: Tensor,
    shared: LayerInputs,
}

/// The final hidden states [batch, seq, hidden], as [`Transformer::hidden_states`]
/// (no cache). With `checkpointing` and gradient on, they hang from the model's graph
/// only through the final norm, and the [`Recompute`] returned must run after the
/// loss's backward.
pub fn hidden_states(
    model: &Transformer,
    input_ids: &Tensor,
    position_ids: &Tensor,
    key_mask: &Tensor,
    checkpointing: bool,
) -> Result<(Tensor, Option<Recompute>)> {
    if !checkpointing {
        let hidden = model.hidden_states(input_ids, position_ids, key_mask, None)?;
        return Ok((hidden, None));
    }
    let (embedded, shared) = model.embed(input_ids, position_ids, key_mask)?;
    if !embedded.requires_grad() {
        // Nothing to take gradients of: a plain forward.
        let mut x = embedded;
        for i in 0..model.num_layers() {
            x = model.layer(i, &x, &shared);
        }
        return Ok((model.final_norm(&x), None));
    }
    let mut inputs = Vec::with_capacity(model.num_layers());
    let mut x = embedded.detach();
    tch::no_grad(|| {
        for i in 0..model.num_layers() {
            let next = model.layer(i, &x, &shared);
            inputs.push(std::mem::replace(&mut x, next));
        }
    });
    let output = x.set_requires_grad(true);
    let hidden = model.final_norm(&output);
    let recompute = Recompute {
        embedded,
        inputs,
        output,
        shared,
    };
    Ok((hidden, Some(recompute)))
}

impl Recompute {
    /// Carries the gradient the loss left on the last layer's output down through
    /// every layer (run again with gradient) into the weights.
    pub fn backward(&self, model: &Transformer) {
        let mut grad = self.output.grad();
        if !grad.defined() {
            return;
        }
        for (i, input) in self.inputs.iter().enumerate().rev() {
            let input = input.detach().set_requires_grad(true);
            let output = model.layer(i, &input, &self.shared);
            (output * &grad).sum(Kind::Float).backward();
            grad = input.grad();
        }
        (&self.embedded * grad).sum(Kind::Float).backward();
    }
}
