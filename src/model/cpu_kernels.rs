//! AVX2/FMA loops for the CPU decoder: the matrix product against weights stored
//! [outputs, inputs] (nn::Linear's layout), dot products and axpy.
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
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// `out += weight · v`.
pub(crate) fn axpy(out: &mut [f32], weight: f32, v: &[f32]) {
    assert_eq!(out.len(), v.len());
    assert!(available(), "the CPU kernels need AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present; both slices hold `out.len()` floats.
    unsafe {
        axpy_avx(out, weight, v)
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx(out: &mut [f32], weight: f32, v: &[f32]) {
    unsafe {
        let len = out.len();
        let (o, x) = (out.as_mut_ptr(), v.as_ptr());
        let w = _mm256_set1_ps(weight);
        let chunks = len / 8;
        for c in 0..chunks {
            let at = c * 8;
            let sum = _mm256_fmadd_ps(
                w,
                _mm256_loadu_ps(x.wrapping_add(at)),
                _mm256_loadu_ps(o.wrapping_add(at)),
            );
            _mm256_storeu_ps(o.wrapping_add(at), sum);
        }
        for i in chunks * 8..len {
            *o.wrapping_add(i) += weight * *x.wrapping_add(i);
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
        let rows = [(x0, a0, b0), (x1, a1, b1), (x2, a2, b2), (x3, a3, b3)];
        for (i, (xr, a, b)) in rows.into_iter().enumerate() {
            let at = (row + i) * outputs + output;
            out[at] = horizontal_sum(a) + tail(xr, w0);
            out[at + 1] = horizontal_sum(b) + tail(xr, w1);
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
        for (rows, inputs, outputs) in [(1, 8, 1), (5, 13, 3), (9, 64, 7), (4, 128, 2)] {
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
    fn dot_and_axpy_handle_tails() {
        if !available() {
            return;
        }
        let (a, b) = (values(19, 3), values(19, 4));
        let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - expected).abs() < 1e-5);
        let mut out = a.clone();
        axpy(&mut out, 0.5, &b);
        for i in 0..19 {
            assert!((out[i] - (a[i] + 0.5 * b[i])).abs() < 1e-6);
        }
    }
}
