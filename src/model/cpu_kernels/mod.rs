//! The loops of the CPU decoder: the matrix product against a weight matrix, the dot
//! products and weighted sums of attention, SiLU and softmax, in two kernel sets picked
//! at run time through [`KernelSet`]: AVX2/FMA (`avx2.rs`), and plain Rust for any CPU
//! (`portable.rs`).
//!
//! Large models' weights are read where the model keeps them ([`Matrix`]: row-major,
//! f32 or bf16), so a decoder costs no copy of the model, and a product can split its
//! outputs over rayon's threads: every weight is then read from memory once per step,
//! whatever the number of threads. Small models' weights are repacked once per decoder
//! ([`PackedWeights`]: panels of 16 outputs stored input by input), for a kernel that
//! needs no horizontal sums: faster at the few dozen rows of a decode step, and the
//! copy is a few MB.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod matrix;
mod packed;
mod portable;
#[cfg(test)]
mod tests;

pub(crate) use matrix::{Elements, Matrix};
pub(crate) use packed::PackedWeights;
use rayon::prelude::*;
use std::ops::Range;

/// Where a matrix product writes: `rows` rows of `stride` floats. Several threads may
/// write through it at once, each to its own columns.
#[derive(Clone, Copy)]
pub(crate) struct Columns {
    start: *mut f32,
    rows: usize,
    stride: usize,
}

// SAFETY: a `Columns` is only written through `write`, whose callers keep to columns
// no other thread writes (see `KernelSet::matmul`).
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    /// # Safety
    /// No other thread may write column `column` at the same time.
    unsafe fn write(self, row: usize, column: usize, value: f32) {
        assert!(row < self.rows && column < self.stride);
        // SAFETY: inside the slice `Columns` was made from (checked above).
        unsafe { *self.start.add(row * self.stride + column) = value };
    }
}

/// Outputs per parallel task: small enough to balance, big enough that a task's
/// weight rows (64 × inputs) stream through the cache in one go.
const OUTPUTS_PER_TASK: usize = 64;

/// Which kernels run: a small `Copy` value that the decoder holds and passes to each
/// kernel call, so that one decoder, and the picks of its logits, use one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelSet(Isa);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Portable,
    /// Holds the token that proves the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

impl KernelSet {
    /// The plain-Rust kernels, which run on any CPU.
    pub(crate) fn portable() -> Self {
        Self(Isa::Portable)
    }

    /// The AVX2/FMA kernels, when this CPU reports both features at run time.
    pub(crate) fn detect_avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            avx2::Avx2::detect().map(|token| Self(Isa::Avx2(token)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ; with `parallel`, the
    /// outputs are split over rayon's threads.
    pub(crate) fn matmul(self, x: &[f32], weight: Matrix, out: &mut [f32], parallel: bool) {
        let rows = x.len() / weight.inputs;
        assert_eq!(x.len(), rows * weight.inputs);
        assert_eq!(out.len(), rows * weight.outputs);
        let columns = Columns {
            start: out.as_mut_ptr(),
            rows,
            stride: weight.outputs,
        };
        let outputs = weight.outputs;
        if !parallel || outputs <= OUTPUTS_PER_TASK {
            // SAFETY: one call writes every column.
            unsafe { self.matmul_range(x, weight, columns, 0..outputs) };
            return;
        }
        let tasks = outputs.div_ceil(OUTPUTS_PER_TASK);
        (0..tasks).into_par_iter().for_each(|task| {
            let first = task * OUTPUTS_PER_TASK;
            let range = first..outputs.min(first + OUTPUTS_PER_TASK);
            // SAFETY: each task writes its own columns; `out` outlives the loop.
            unsafe { self.matmul_range(x, weight, columns, range) };
        });
    }

    /// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ, the weights packed.
    pub(crate) fn matmul_packed(self, x: &[f32], weight: &PackedWeights, out: &mut [f32]) {
        match self.0 {
            Isa::Portable => portable::matmul_packed(x, weight, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.matmul_packed(x, weight, out),
        }
    }

    /// # Safety
    /// `out` holds `x`'s rows of `weight.outputs` floats; `range` is this call's alone.
    unsafe fn matmul_range(self, x: &[f32], weight: Matrix, out: Columns, range: Range<usize>) {
        // SAFETY: the caller's promise.
        unsafe {
            match self.0 {
                Isa::Portable => portable::matmul(x, weight, out, range),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(avx2) => avx2.matmul(x, weight, out, range),
            }
        }
    }

    /// The set's name, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "AVX2/FMA",
        }
    }

    /// Dot product of two equally long slices.
    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self.0 {
            Isa::Portable => portable::dot(a, b),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.dot(a, b),
        }
    }

    /// `scores[j] = dot(query, keys[j])` for `keys` [scores.len(), query.len()].
    pub(crate) fn dots(self, query: &[f32], keys: &[f32], scores: &mut [f32]) {
        match self.0 {
            Isa::Portable => portable::dots(query, keys, scores),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.dots(query, keys, scores),
        }
    }

    /// `out = Σ_j weights[j] · values[j]` for `values` [weights.len(), out.len()].
    pub(crate) fn weighted_sum(self, weights: &[f32], values: &[f32], out: &mut [f32]) {
        match self.0 {
            Isa::Portable => portable::weighted_sum(weights, values, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.weighted_sum(weights, values, out),
        }
    }

    /// `gate[i] = silu(gate[i]) · up[i]`: SwiGLU's product, with silu(g) = g / (1 + e⁻ᵍ).
    pub(crate) fn silu_times(self, gate: &mut [f32], up: &[f32]) {
        match self.0 {
            Isa::Portable => portable::silu_times(gate, up),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.silu_times(gate, up),
        }
    }

    /// `scores` ← softmax(`scale` · `scores`).
    pub(crate) fn softmax(self, scores: &mut [f32], scale: f32) {
        let (_, total) = self.exp_from_max(scores, scale);
        scores.iter_mut().for_each(|s| *s /= total);
    }

    /// `x[i]` ← e^(`scale` · (x[i] − max x)), the unnormalized softmax; returns the
    /// max of `x` before the change and the sum after it.
    pub(crate) fn exp_from_max(self, x: &mut [f32], scale: f32) -> (f32, f32) {
        match self.0 {
            Isa::Portable => portable::exp_from_max(x, scale),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.exp_from_max(x, scale),
        }
    }
}

/// The AVX2 set for the tests of its kernels, or `None` (after saying so) where the CPU
/// lacks AVX2/FMA; with `RLVR_REQUIRE_ALL=1` a missing set fails the test instead of
/// letting it pass unrun.
#[cfg(test)]
pub(crate) fn avx2_under_test() -> Option<KernelSet> {
    let avx2 = KernelSet::detect_avx2();
    if avx2.is_none() {
        assert!(
            std::env::var("RLVR_REQUIRE_ALL").as_deref() != Ok("1"),
            "RLVR_REQUIRE_ALL=1, but this CPU lacks AVX2/FMA: the AVX2 kernels cannot be tested"
        );
        println!("AVX2/FMA kernels not tested: this CPU lacks AVX2 or FMA");
    }
    avx2
}
