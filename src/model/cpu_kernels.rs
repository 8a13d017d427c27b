//! AVX2/FMA loops for the CPU decoder: the matrix product against weights stored
//! [outputs, inputs] (nn::Linear's layout), and the dot products and weighted sums of
//! attention.
//!
//! At decode sizes (a few dozen rows) a general GEMM spends as long packing the weight
//! matrix into its panel layout as it spends multiplying. Here every output is a dot
//! product of a row of `x` with a row of the weights, both contiguous already, so
//! nothing is packed; a 4-row × 2-output block keeps 8 accumulators in registers and
//! loads each weight vector once per 4 rows.
//!
//! Callers must check [`available`] first: the functions are compiled for AVX2 and FMA.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out` [rows, outputs] = `x` [rows, inputs] · `weight`ᵀ, with `weight` [outputs, inputs].
pub(crate) fn matmul_transposed(x: &[f32], weight: &[f32], inputs: usize, out: &mut [f32]) {
    let rows = x.len() / inputs;
    let outputs = weight.len() / inputs;
    assert!(x.len() == rows * inputs && weight.len() == outputs * inputs);
    assert_eq!(out.len(), rows * outputs);
    assert!(available(), "the CPU kernels need AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (checked above), and every pointer the block
    // functions form stays inside the slices whose lengths were just checked.
    unsafe {
        // Two weight rows (in L1) against every row of `x` (small enough for L1 too),
        // so each weight is read from memory once per product.
        let mut output = 0;
        while output + 2 <= outputs {
            let mut row = 0;
            while row + 4 <= rows {
                block_4x2(x, weight, inputs, row, output, out, outputs);
                row += 4;
            }
            for r in row..rows {
                for o in output..output + 2 {
                    out[r * outputs + o] = dot_unchecked(x, weight, inputs, r, o);
                }
            }
            output += 2;
        }
        for o in output..outputs {
            for r in 0..rows {
                out[r * outputs + o] = dot_unchecked(x, weight, inputs, r, o);
            }
        }
    }
}

/// Dot product of two equally long slices.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(available(), "the CPU kernels need AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present; both slices hold `a.len()` floats.
    unsafe {
        dot_avx(a.as_ptr(), b.as_ptr(), a.len())
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// `scores[j] = dot(query, keys[j])` for `keys` [scores.len(), query.len()].
pub(crate) fn dots(query: &[f32], keys: &[f32], scores: &mut [f32]) {
    let dim = query.len();
    assert_eq!(keys.len(), scores.len() * dim);
    assert!(available(), "the CPU kernels need AVX2 and FMA");
    let mut key = 0;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present; keys `key..key + 8` lie inside `keys` and
    // their scores inside `scores`.
    unsafe {
        if dim.is_multiple_of(8) {
            while key + 8 <= scores.len() {
                let sums = dots_of_8(query.as_ptr(), keys.as_ptr().wrapping_add(key * dim), dim);
                _mm256_storeu_ps(scores.as_mut_ptr().wrapping_add(key), sums);
                key += 8;
            }
        }
    }
    for (k, score) in scores.iter_mut().enumerate().skip(key) {
        *score = dot(query, &keys[k * dim..(k + 1) * dim]);
    }
}

/// `out = Σ_j weights[j] · values[j]` for `values` [weights.len(), out.len()].
pub(crate) fn weighted_sum(weights: &[f32], values: &[f32], out: &mut [f32]) {
    assert_eq!(values.len(), weights.len() * out.len());
    assert!(available(), "the CPU kernels need AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present; the lengths are checked above.
    unsafe {
        weighted_sum_avx(weights, values, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_unchecked(
    x: &[f32],
    weight: &[f32],
    inputs: usize,
    row: usize,
    output: usize,
) -> f32 {
    unsafe {
        dot_avx(
            x.as_ptr().wrapping_add(row * inputs),
            weight.as_ptr().wrapping_add(output * inputs),
            inputs,
        )
    }
}

#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_of_8(query: *const f32, keys: *const f32, dim: usize) -> __m256 {
    unsafe {
        let key = |j: usize| keys.wrapping_add(j * dim);
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
#[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum_avx(weights: &[f32], values: &[f32], out: &mut [f32]) {
    unsafe {
        let dim = out.len();
        let (v, o) = (values.as_ptr(), out.as_mut_ptr());
        let chunks = dim / 8;
        for c in 0..chunks {
            let at = c * 8;
            // Four running sums so that consecutive FMAs do not wait on each other.
            let term = |j: usize, sum: __m256| {
                let value = _mm256_loadu_ps(v.wrapping_add(j * dim + at));
                _mm256_fmadd_ps(_mm256_set1_ps(weights[j]), value, sum)
            };
            let zero = _mm256_setzero_ps();
            let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
            let mut j = 0;
            while j + 4 <= weights.len() {
                s0 = term(j, s0);
                s1 = term(j + 1, s1);
                s2 = term(j + 2, s2);
                s3 = term(j + 3, s3);
                j += 4;
            }
            for j in j..weights.len() {
                s0 = term(j, s0);
            }
            let total = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            _mm256_storeu_ps(o.wrapping_add(at), total);
        }
        for i in chunks * 8..dim {
            *o.wrapping_add(i) = weights
                .iter()
                .enumerate()
                .map(|(j, w)| w * *v.wrapping_add(j * dim + i))
                .sum();
        }
    }
}

/// Outputs `output` and `output + 1` of rows `row..row + 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_4x2(
    x: &[f32],
    weight: &[f32],
    inputs: usize,
    row: usize,
    output: usize,
    out: &mut [f32],
    outputs: usize,
) {
    unsafe {
        let x0 = x.as_ptr().wrapping_add(row * inputs);
        let (x1, x2, x3) = (
            x0.wrapping_add(inputs),
            x0.wrapping_add(2 * inputs),
            x0.wrapping_add(3 * inputs),
        );
        let w0 = weight.as_ptr().wrapping_add(output * inputs);
        let w1 = w0.wrapping_add(inputs);
        let zero = _mm256_setzero_ps();
        let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
        let (mut b0, mut b1, mut b2, mut b3) = (zero, zero, zero, zero);
        let chunks = inputs / 8;
        for c in 0..chunks {
            let at = c * 8;
            let (v0, v1) = (
                _mm256_loadu_ps(w0.wrapping_add(at)),
                _mm256_loadu_ps(w1.wrapping_add(at)),
            );
            let r0 = _mm256_loadu_ps(x0.wrapping_add(at));
            a0 = _mm256_fmadd_ps(r0, v0, a0);
            b0 = _mm256_fmadd_ps(r0, v1, b0);
            let r1 = _mm256_loadu_ps(x1.wrapping_add(at));
            a1 = _mm256_fmadd_ps(r1, v0, a1);
            b1 = _mm256_fmadd_ps(r1, v1, b1);
            let r2 = _mm256_loadu_ps(x2.wrapping_add(at));
            a2 = _mm256_fmadd_ps(r2, v0, a2);
            b2 = _mm256_fmadd_ps(r2, v1, b2);
            let r3 = _mm256_loadu_ps(x3.wrapping_add(at));
            a3 = _mm256_fmadd_ps(r3, v0, a3);
            b3 = _mm256_fmadd_ps(r3, v1, b3);
        }
        let tail = |xr: *const f32, wr: *const f32| -> f32 {
            (chunks * 8..inputs)
                .map(|i| *xr.wrapping_add(i) * *wr.wrapping_add(i))
                .sum()
        };
        let mut sums = [0.0f32; 8];
        _mm256_storeu_ps(
            sums.as_mut_ptr(),
            sums_of_8([a0, b0, a1, b1, a2, b2, a3, b3]),
        );
        for (i, xr) in [x0, x1, x2, x3].into_iter().enumerate() {
            let at = (row + i) * outputs + output;
            out[at] = sums[2 * i] + tail(xr, w0);
            out[at + 1] = sums[2 * i + 1] + tail(xr, w1);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn horizontal_sum(v: __m256) -> f32 {
    let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matmul_matches_the_naive_product_for_odd_sizes() {
        if !available() {
            return;
        }
        for (rows, inputs, outputs) in [(1, 8, 1), (5, 13, 3), (9, 64, 7), (4, 128, 2), (17, 24, 5)]
        {
            let (x, w) = (values(rows * inputs, 1), values(outputs * inputs, 2));
            let mut out = vec![0.0; rows * outputs];
            matmul_transposed(&x, &w, inputs, &mut out);
            for r in 0..rows {
                for o in 0..outputs {
                    let expected: f32 = (0..inputs)
                        .map(|i| x[r * inputs + i] * w[o * inputs + i])
                        .sum();
                    let got = out[r * outputs + o];
                    assert!(
                        (got - expected).abs() < 1e-4,
                        "{rows}x{inputs}x{outputs} [{r},{o}]: {got} vs {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn dots_and_weighted_sums_match_naive_loops() {
        if !available() {
            return;
        }
        for (keys, dim) in [(19, 32), (5, 13), (8, 8)] {
            let (query, k) = (values(dim, 3), values(keys * dim, 4));
            let mut scores = vec![0.0; keys];
            dots(&query, &k, &mut scores);
            let weights = values(keys, 5);
            let mut summed = vec![0.0; dim];
            weighted_sum(&weights, &k, &mut summed);
            for j in 0..keys {
                let expected: f32 = (0..dim).map(|i| query[i] * k[j * dim + i]).sum();
                assert!((scores[j] - expected).abs() < 1e-4, "{keys}x{dim} key {j}");
            }
            for i in 0..dim {
                let expected: f32 = (0..keys).map(|j| weights[j] * k[j * dim + i]).sum();
                assert!(
                    (summed[i] - expected).abs() < 1e-4,
                    "{keys}x{dim} column {i}"
                );
            }
        }
    }
}
