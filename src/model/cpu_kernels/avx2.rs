//! The AVX2/FMA kernel set: the matrix product against packed weights, the dot products
//! and weighted sums of attention, SiLU and the exponentials of softmax.
//!
//! Two matrix products: against weights in the model's own layout (`in_place.rs`), and
//! against packed panels (small models): two aligned loads of a panel and one
//! broadcast of an input per row, a 6-row × 16-output tile that keeps 12 accumulators
//! and needs no horizontal sums.
//!
//! Every entry point is a method of [`Avx2`], a token only [`Avx2::detect`] makes, so
//! the `unsafe` calls of functions compiled for AVX2 and FMA cannot run on a CPU that
//! lacks them.

mod in_place;

use super::Columns;
use super::matrix::{Elements, Matrix};
use super::packed::{PANEL, PackedWeights};
use std::arch::x86_64::*;
use std::ops::Range;

/// Rows per tile against packed panels: 6 × 2 accumulators, 2 weight vectors and a
/// broadcast fill 15 of the 16 vector registers.
const PANEL_TILE_ROWS: usize = 6;

/// Proof that this CPU has AVX2 and FMA: the private field keeps any other code from
/// making one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// The token, when the CPU reports both AVX2 and FMA at run time.
    pub(super) fn detect() -> Option<Self> {
        let present = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        present.then_some(Self { _detected: () })
    }

    /// Outputs `range` of `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ.
    ///
    /// # Safety
    /// `out` must be valid for `x`'s rows × `weight.outputs` floats, and nothing else
    /// may touch the columns of `range` while this runs.
    pub(super) unsafe fn matmul(
        self,
        x: &[f32],
        weight: Matrix,
        out: Columns,
        range: Range<usize>,
    ) {
        let inputs = weight.inputs;
        let rows = x.len() / inputs;
        assert!(x.len() == rows * inputs && range.end <= weight.outputs);
        // SAFETY: `self` proves AVX2 and FMA; `tiles` reads rows of `x` and of the
        // weights inside their slices, and writes only `range` (the caller's promise).
        unsafe {
            match weight.elements {
                Elements::F32(w) => in_place::tiles(x, rows, inputs, w.as_ptr(), out, range),
                Elements::Bf16(w) => in_place::tiles(x, rows, inputs, w.as_ptr(), out, range),
            }
        }
    }

    /// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ, against packed panels.
    pub(super) fn matmul_packed(self, x: &[f32], weight: &PackedWeights, out: &mut [f32]) {
        let (inputs, outputs) = (weight.inputs, weight.outputs);
        let rows = x.len() / inputs;
        assert_eq!(x.len(), rows * inputs);
        assert_eq!(out.len(), rows * outputs);
        let panels = weight.panels();
        assert!(panels.len() >= outputs.div_ceil(PANEL) * PANEL * inputs);
        assert!(panels.as_ptr().align_offset(32) == 0, "unaligned panels");
        // SAFETY: `self` proves AVX2 and FMA. A tile reads rows `row..row + R` of `x`
        // and one whole panel, all inside the slices, and writes `columns` outputs of
        // those rows, inside `out`; the panels are 32-byte aligned.
        unsafe {
            // One panel (at most 16 × inputs floats, in L1) against every row of `x`.
            for first in (0..outputs).step_by(PANEL) {
                let columns = PANEL.min(outputs - first);
                let panel = panels.as_ptr().wrapping_add(first * inputs);
                let mut row = 0;
                while row < rows {
                    let x = x.as_ptr().wrapping_add(row * inputs);
                    let out = out.as_mut_ptr().wrapping_add(row * outputs + first);
                    let tile = (outputs, columns);
                    match rows - row {
                        1 => tile_of::<1>(x, inputs, panel, out, tile),
                        2 => tile_of::<2>(x, inputs, panel, out, tile),
                        3 => tile_of::<3>(x, inputs, panel, out, tile),
                        4 => tile_of::<4>(x, inputs, panel, out, tile),
                        5 => tile_of::<5>(x, inputs, panel, out, tile),
                        _ => tile_of::<PANEL_TILE_ROWS>(x, inputs, panel, out, tile),
                    }
                    row += PANEL_TILE_ROWS;
                }
            }
        }
    }

    /// Dot product of two equally long slices.
    pub(super) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: `self` proves AVX2 and FMA; both slices hold `a.len()` floats.
        unsafe { dot_avx(a.as_ptr(), b.as_ptr(), a.len()) }
    }

    /// `scores[j] = dot(query, keys[j])` for `keys` [scores.len(), query.len()].
    pub(super) fn dots(self, query: &[f32], keys: &[f32], scores: &mut [f32]) {
        let dim = query.len();
        assert_eq!(keys.len(), scores.len() * dim);
        let mut key = 0;
        if dim.is_multiple_of(8) {
            while key + 8 <= scores.len() {
                // SAFETY: `self` proves AVX2 and FMA; keys `key..key + 8` lie inside
                // `keys` and their scores inside `scores`.
                unsafe {
                    let sums =
                        dots_of_8(query.as_ptr(), keys.as_ptr().wrapping_add(key * dim), dim);
                    _mm256_storeu_ps(scores.as_mut_ptr().wrapping_add(key), sums);
                }
                key += 8;
            }
        }
        for (k, score) in scores.iter_mut().enumerate().skip(key) {
            *score = self.dot(query, &keys[k * dim..(k + 1) * dim]);
        }
    }

    /// `out = Σ_j weights[j] · values[j]` for `values` [weights.len(), out.len()].
    pub(super) fn weighted_sum(self, weights: &[f32], values: &[f32], out: &mut [f32]) {
        assert_eq!(values.len(), weights.len() * out.len());
        // SAFETY: `self` proves AVX2 and FMA; the lengths are checked above.
        unsafe { weighted_sum_avx(weights, values, out) }
    }

    /// `gate[i] = silu(gate[i]) · up[i]`, with silu(g) = g / (1 + e⁻ᵍ).
    pub(super) fn silu_times(self, gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len());
        // SAFETY: `self` proves AVX2 and FMA.
        let done = unsafe { silu_times_avx(gate, up) };
        for (g, u) in gate[done..].iter_mut().zip(&up[done..]) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }

    /// `x[i]` ← e^(`scale` · (x[i] − max x)); returns the max before and the sum after.
    pub(super) fn exp_from_max(self, x: &mut [f32], scale: f32) -> (f32, f32) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // SAFETY: `self` proves AVX2 and FMA.
        let (done, mut total) = unsafe { exp_shifted_avx(x, scale, scale * max) };
        for v in &mut x[done..] {
            *v = (*v * scale - scale * max).exp();
            total += *v;
        }
        (max, total)
    }
}

/// The first multiple of 8 of the floats of `silu_times`; returns how many it did.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_times_avx(gate: &mut [f32], up: &[f32]) -> usize {
    let one = _mm256_set1_ps(1.0);
    let mut done = 0;
    while done + 8 <= gate.len().min(up.len()) {
        let (g_at, u_at) = (
            gate.as_mut_ptr().wrapping_add(done),
            up.as_ptr().wrapping_add(done),
        );
        // SAFETY: 8 floats from `done` on lie inside both slices.
        let (g, u) = unsafe { (_mm256_loadu_ps(g_at), _mm256_loadu_ps(u_at)) };
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        // SAFETY: as for the load.
        unsafe { _mm256_storeu_ps(g_at, _mm256_mul_ps(silu, u)) };
        done += 8;
    }
    done
}

/// `scores[i] = e^(scale · scores[i] - shift)` for the first multiple of 8 of them;
/// returns how many it did and their sum.
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx(scores: &mut [f32], scale: f32, shift: f32) -> (usize, f32) {
    let (scale, shift) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
    let mut sums = _mm256_setzero_ps();
    let mut done = 0;
    while done + 8 <= scores.len() {
        let at = scores.as_mut_ptr().wrapping_add(done);
        // SAFETY: 8 floats from `done` on lie inside `scores`.
        let e = exp8(_mm256_fmsub_ps(
            unsafe { _mm256_loadu_ps(at) },
            scale,
            shift,
        ));
        // SAFETY: as for the load.
        unsafe { _mm256_storeu_ps(at, e) };
        sums = _mm256_add_ps(sums, e);
        done += 8;
    }
    (done, horizontal_sum(sums))
}

/// e^x of 8 floats: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by Cephes' degree-6
/// polynomial (relative error about 2e-7 over the range), 2^n built in the exponent bits.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.7),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 in two parts, so that n · ln 2 is exact enough.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let two_to_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(two_to_n))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx(a: *const f32, b: *const f32, len: usize) -> f32 {
    unsafe {
        let mut sum = _mm256_setzero_ps();
        let chunks = len / 8;
        for c in 0..chunks {
            let at = c * 8;
            sum = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.wrapping_add(at)),
                _mm256_loadu_ps(b.wrapping_add(at)),
                sum,
            );
        }
        let mut total = horizontal_sum(sum);
        for i in chunks * 8..len {
            total += *a.wrapping_add(i) * *b.wrapping_add(i);
        }
        total
    }
}

/// Dot products of `query` with 8 consecutive keys of `dim` floats (a multiple of 8).
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_of_8(query: *const f32, keys: *const f32, dim: usize) -> __m256 {
    unsafe {
        let key_at: [*const f32; 8] = std::array::from_fn(|j| keys.wrapping_add(j * dim));
        let key = |j: usize| key_at[j];
        let zero = _mm256_setzero_ps();
        let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
        let (mut s4, mut s5, mut s6, mut s7) = (zero, zero, zero, zero);
        for at in (0..dim).step_by(8) {
            let q = _mm256_loadu_ps(query.wrapping_add(at));
            s0 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(0).wrapping_add(at)), s0);
            s1 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(1).wrapping_add(at)), s1);
            s2 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(2).wrapping_add(at)), s2);
            s3 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(3).wrapping_add(at)), s3);
            s4 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(4).wrapping_add(at)), s4);
            s5 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(5).wrapping_add(at)), s5);
            s6 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(6).wrapping_add(at)), s6);
            s7 = _mm256_fmadd_ps(q, _mm256_loadu_ps(key(7).wrapping_add(at)), s7);
        }
        sums_of_8([s0, s1, s2, s3, s4, s5, s6, s7])
    }
}

/// The totals of eight vectors, in order, as one vector.
#[target_feature(enable = "avx2,fma")]
fn sums_of_8(v: [__m256; 8]) -> __m256 {
    // Pairwise sums leave, per 128-bit half, the half-sums of four vectors; adding the
    // halves gives the eight totals.
    let low = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    let high = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    _mm256_add_ps(
        _mm256_permute2f128_ps(low, high, 0x20),
        _mm256_permute2f128_ps(low, high, 0x31),
    )
}

#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum_avx(weights: &[f32], values: &[f32], out: &mut [f32]) {
    let dim = out.len();
    let mut at = 0;
    // Columns in blocks of up to 4 vectors, each summed over all rows of `values`.
    while at + 8 <= dim {
        let vectors = ((dim - at) / 8).min(4);
        // SAFETY: columns `at..at + 8 · vectors` lie inside every row of `values`
        // (checked by the caller) and inside `out`.
        unsafe {
            let (v, o) = (
                values.as_ptr().wrapping_add(at),
                out.as_mut_ptr().wrapping_add(at),
            );
            match vectors {
                1 => column_sums::<1>(weights, v, dim, o),
                2 => column_sums::<2>(weights, v, dim, o),
                3 => column_sums::<3>(weights, v, dim, o),
                _ => column_sums::<4>(weights, v, dim, o),
            }
        }
        at += 8 * vectors;
    }
    for (i, o) in out.iter_mut().enumerate().skip(at) {
        *o = weights
            .iter()
            .zip(values.chunks_exact(dim))
            .map(|(w, row)| w * row[i])
            .sum();
    }
}

/// `out[..8N] = Σ_j weights[j] · values[j · stride..][..8N]`, two rows at a time into
/// separate sums so that consecutive FMAs do not wait on each other.
#[target_feature(enable = "avx2,fma")]
unsafe fn column_sums<const N: usize>(
    weights: &[f32],
    values: *const f32,
    stride: usize,
    out: *mut f32,
) {
    unsafe {
        let mut even = [_mm256_setzero_ps(); N];
        let mut odd = [_mm256_setzero_ps(); N];
        let mut row = values;
        let mut pairs = weights.chunks_exact(2);
        for pair in &mut pairs {
            let (w0, w1) = (_mm256_set1_ps(pair[0]), _mm256_set1_ps(pair[1]));
            let next = row.wrapping_add(stride);
            for c in 0..N {
                even[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(row.wrapping_add(8 * c)), even[c]);
                odd[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(next.wrapping_add(8 * c)), odd[c]);
            }
            row = next.wrapping_add(stride);
        }
        if let &[w] = pairs.remainder() {
            let w = _mm256_set1_ps(w);
            for (c, sum) in even.iter_mut().enumerate() {
                *sum = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.wrapping_add(8 * c)), *sum);
            }
        }
        for c in 0..N {
            _mm256_storeu_ps(out.wrapping_add(8 * c), _mm256_add_ps(even[c], odd[c]));
        }
    }
}

/// `R` rows of the product from `x` on, against one panel, into `out`:
/// `tile = (row stride of out, outputs of the panel to write)`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_of<const R: usize>(
    x: *const f32,
    inputs: usize,
    panel: *const f32,
    out: *mut f32,
    (stride, columns): (usize, usize),
) {
    unsafe {
        let mut low = [_mm256_setzero_ps(); R];
        let mut high = [_mm256_setzero_ps(); R];
        // Pointers advanced step by step: the loop does no index arithmetic.
        let mut rows: [*const f32; R] = std::array::from_fn(|r| x.wrapping_add(r * inputs));
        let mut w = panel;
        for _ in 0..inputs {
            let (w_low, w_high) = (_mm256_load_ps(w), _mm256_load_ps(w.wrapping_add(8)));
            for r in 0..R {
                let xi = _mm256_broadcast_ss(&*rows[r]);
                low[r] = _mm256_fmadd_ps(xi, w_low, low[r]);
                high[r] = _mm256_fmadd_ps(xi, w_high, high[r]);
                rows[r] = rows[r].wrapping_add(1);
            }
            w = w.wrapping_add(PANEL);
        }
        for r in 0..R {
            let row = out.wrapping_add(r * stride);
            if columns == PANEL {
                _mm256_storeu_ps(row, low[r]);
                _mm256_storeu_ps(row.wrapping_add(8), high[r]);
            } else {
                let mut sums = [0.0f32; PANEL];
                _mm256_storeu_ps(sums.as_mut_ptr(), low[r]);
                _mm256_storeu_ps(sums.as_mut_ptr().wrapping_add(8), high[r]);
                std::ptr::copy_nonoverlapping(sums.as_ptr(), row, columns);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn horizontal_sum(v: __m256) -> f32 {
    let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}
