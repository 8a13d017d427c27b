//! The portable kernel set: the same kernels as `avx2.rs` in plain Rust, for any CPU.
//!
//! The loops keep the AVX2 set's shapes (eight partial sums per dot product) so that
//! the compiler can vectorize them for whatever the target offers, and they use
//! separate multiplies and adds: `mul_add` without FMA hardware is a slow library call.

use super::Columns;
use super::matrix::{Elements, Matrix};
use super::packed::{PANEL, PackedWeights};
use std::ops::Range;

/// Partial sums per dot product: as many as the AVX2 set's lanes.
const LANES: usize = 8;

/// Outputs `range` of `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ.
///
/// # Safety
/// As [`super::KernelSet::matmul`]: `out` holds the rows, and `range` is this call's alone.
pub(super) unsafe fn matmul(x: &[f32], weight: Matrix, out: Columns, range: Range<usize>) {
    let inputs = weight.inputs;
    let mut widened = Vec::new();
    for output in range {
        let row: &[f32] = match weight.elements {
            Elements::F32(w) => &w[output * inputs..(output + 1) * inputs],
            Elements::Bf16(_) => {
                weight.row_into(output, &mut widened);
                &widened
            }
        };
        for (r, x_row) in x.chunks_exact(inputs).enumerate() {
            // SAFETY: the caller's promise.
            unsafe { out.write(r, output, dot(x_row, row)) };
        }
    }
}

/// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ.
pub(super) fn matmul_packed(x: &[f32], weight: &PackedWeights, out: &mut [f32]) {
    let (inputs, outputs) = (weight.inputs, weight.outputs);
    let rows = x.len() / inputs;
    assert_eq!(x.len(), rows * inputs);
    assert_eq!(out.len(), rows * outputs);
    let panels = weight.panels().chunks_exact(PANEL * inputs);
    for (first, panel) in (0..outputs).step_by(PANEL).zip(panels) {
        let columns = PANEL.min(outputs - first);
        for (row, out_row) in x.chunks_exact(inputs).zip(out.chunks_exact_mut(outputs)) {
            let sums = panel_times(row, panel);
            out_row[first..first + columns].copy_from_slice(&sums[..columns]);
        }
    }
}

/// The 16 outputs of one panel [inputs, 16] for one row of inputs.
fn panel_times(row: &[f32], panel: &[f32]) -> [f32; PANEL] {
    let mut sums = [0.0f32; PANEL];
    for (&input, weights) in row.iter().zip(panel.chunks_exact(PANEL)) {
        for (sum, &w) in sums.iter_mut().zip(weights) {
            *sum += input * w;
        }
    }
    sums
}

/// Dot product of two equally long slices.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut sums = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
            *sum += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// `scores[j] = dot(query, keys[j])` for `keys` [scores.len(), query.len()].
pub(super) fn dots(query: &[f32], keys: &[f32], scores: &mut [f32]) {
    let dim = query.len();
    assert_eq!(keys.len(), scores.len() * dim);
    for (score, key) in scores.iter_mut().zip(keys.chunks_exact(dim)) {
        *score = dot(query, key);
    }
}

/// `out = Σ_j weights[j] · values[j]` for `values` [weights.len(), out.len()].
pub(super) fn weighted_sum(weights: &[f32], values: &[f32], out: &mut [f32]) {
    assert_eq!(values.len(), weights.len() * out.len());
    out.fill(0.0);
    for (&w, row) in weights.iter().zip(values.chunks_exact(out.len())) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += w * v;
        }
    }
}

/// `gate[i] = silu(gate[i]) · up[i]`, with silu(g) = g / (1 + e⁻ᵍ).
pub(super) fn silu_times(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x[i]` ← e^(`scale` · (x[i] − max x)); returns the max before and the sum after.
pub(super) fn exp_from_max(x: &mut [f32], scale: f32) -> (f32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for v in x.iter_mut() {
        *v = (*v * scale - scale * max).exp();
        total += *v;
    }
    (max, total)
}
