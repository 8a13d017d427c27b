//! The loops of the CPU decoder: the matrix product against a weight matrix, the dot
//! products and weighted sums of attention, SiLU and softmax, in two kernel sets picked
//! at run time through [`KernelSet`]: AVX2/FMA (`avx2.rs`), and plain Rust for any CPU
//! (`portable.rs`).
//!
//! The weights are repacked once per decoder ([`PackedWeights`]) into panels of 16
//! outputs, each stored input by input, which both sets read. A general GEMM would pack
//! the weights on every call, as long as the multiplication takes at the few dozen rows
//! of a decode step.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod packed;
mod portable;
#[cfg(test)]
mod tests;

pub(crate) use packed::PackedWeights;

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

    /// The set's name, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "AVX2/FMA",
        }
    }

    /// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ.
    pub(crate) fn matmul(self, x: &[f32], weight: &PackedWeights, out: &mut [f32]) {
        match self.0 {
            Isa::Portable => portable::matmul(x, weight, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(avx2) => avx2.matmul(x, weight, out),
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
