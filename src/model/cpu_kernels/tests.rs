//! Each kernel set against naive loops: the portable set on every machine, the AVX2 set
//! where the CPU has it (see [`avx2_under_test`] for where it does not).

use super::matrix::{bf16_to_f32, f32_to_bf16};
use super::{Elements, KernelSet, Matrix, PackedWeights, avx2_under_test};

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
        })
        .collect()
}

#[test]
fn portable_matmul_matches_the_naive_product_for_odd_sizes() {
    matmul_matches_the_naive_product(KernelSet::portable());
}

#[test]
fn avx2_matmul_matches_the_naive_product_for_odd_sizes() {
    if let Some(avx2) = avx2_under_test() {
        matmul_matches_the_naive_product(avx2);
    }
}

#[test]
fn portable_silu_and_softmax_match_libm() {
    silu_and_softmax_match_libm(KernelSet::portable());
}

#[test]
fn avx2_silu_and_softmax_match_libm() {
    if let Some(avx2) = avx2_under_test() {
        silu_and_softmax_match_libm(avx2);
    }
}

#[test]
fn portable_dots_and_weighted_sums_match_naive_loops() {
    dots_and_weighted_sums_match_naive_loops(KernelSet::portable());
}

#[test]
fn avx2_dots_and_weighted_sums_match_naive_loops() {
    if let Some(avx2) = avx2_under_test() {
        dots_and_weighted_sums_match_naive_loops(avx2);
    }
}

/// f32 and bf16 weights in place, on one thread and split over rayon's, and f32
/// weights packed, against a naive product of the same (widened) weights.
fn matmul_matches_the_naive_product(kernels: KernelSet) {
    let name = kernels.name();
    for (rows, inputs, outputs) in [
        (1, 8, 1),
        (5, 13, 3),
        (9, 64, 7),
        (4, 128, 2),
        (17, 24, 35),
        (13, 16, 48),
        (3, 40, 203),
    ] {
        let (x, w) = (values(rows * inputs, 1), values(outputs * inputs, 2));
        let bits: Vec<u16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
        let rounded: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
        let cases = [
            (Elements::F32(&w), &w, "f32"),
            (Elements::Bf16(&bits), &rounded, "bf16"),
        ];
        let mut packed = vec![f32::NAN; rows * outputs];
        kernels.matmul_packed(&x, &PackedWeights::pack(&w, inputs), &mut packed);
        for (elements, weights, kind) in cases {
            for parallel in [false, true] {
                let mut out = vec![f32::NAN; rows * outputs];
                kernels.matmul(&x, Matrix::new(elements, inputs), &mut out, parallel);
                for r in 0..rows {
                    for o in 0..outputs {
                        let expected: f32 = (0..inputs)
                            .map(|i| x[r * inputs + i] * weights[o * inputs + i])
                            .sum();
                        let got = out[r * outputs + o];
                        if kind == "f32" {
                            let from_panels = packed[r * outputs + o];
                            assert!((from_panels - expected).abs() < 1e-4, "{name} packed");
                        }
                        assert!(
                            (got - expected).abs() < 1e-4,
                            "{name} {kind} parallel={parallel} {rows}x{inputs}x{outputs} [{r},{o}]: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_rounds_to_nearest_even_and_widens_exactly() {
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa.
    assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
}

fn silu_and_softmax_match_libm(kernels: KernelSet) {
    let name = kernels.name();
    // Past ±87 the exponential saturates; silu must stay finite there.
    let mut gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.9).collect();
    let up = values(gate.len(), 6);
    let expected: Vec<f32> = gate
        .iter()
        .zip(&up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    kernels.silu_times(&mut gate, &up);
    for (i, (got, want)) in gate.iter().zip(&expected).enumerate() {
        assert!(
            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{name} silu [{i}]: {got} vs {want}"
        );
    }
    for len in [1, 7, 8, 29] {
        let mut scores: Vec<f32> = values(len, 7).iter().map(|v| v * 30.0).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = scores
            .iter()
            .map(|s| ((s - max) as f64 * 0.5).exp())
            .collect();
        let total: f64 = exps.iter().sum();
        let mut unnormalized = scores.clone();
        let (got_max, got_total) = kernels.exp_from_max(&mut unnormalized, 0.5);
        assert_eq!(got_max, max, "{name} max of {len}");
        assert!(
            (got_total as f64 - total).abs() < 1e-5 * total,
            "{name} sum of {len}: {got_total} vs {total}"
        );
        kernels.softmax(&mut scores, 0.5);
        for (got, e) in scores.iter().zip(&exps) {
            assert!(
                (*got as f64 - e / total).abs() < 1e-6,
                "{name} softmax of {len}: {got} vs {}",
                e / total
            );
        }
    }
}

fn dots_and_weighted_sums_match_naive_loops(kernels: KernelSet) {
    let name = kernels.name();
    for (keys, dim) in [(19, 32), (5, 13), (8, 8), (6, 24), (7, 72), (1, 48)] {
        let (query, k) = (values(dim, 3), values(keys * dim, 4));
        let mut scores = vec![0.0; keys];
        kernels.dots(&query, &k, &mut scores);
        let weights = values(keys, 5);
        // Stale values in `out` must not leak into the sums.
        let mut summed = vec![9.0; dim];
        kernels.weighted_sum(&weights, &k, &mut summed);
        for j in 0..keys {
            let expected: f32 = (0..dim).map(|i| query[i] * k[j * dim + i]).sum();
            assert!(
                (scores[j] - expected).abs() < 1e-4,
                "{name} {keys}x{dim} key {j}: {} vs {expected}",
                scores[j]
            );
            let single = kernels.dot(&query, &k[j * dim..][..dim]);
            assert!((single - expected).abs() < 1e-4, "{name} dot {keys}x{dim}");
        }
        for i in 0..dim {
            let expected: f32 = (0..keys).map(|j| weights[j] * k[j * dim + i]).sum();
            assert!(
                (summed[i] - expected).abs() < 1e-4,
                "{name} {keys}x{dim} column {i}: {} vs {expected}",
                summed[i]
            );
        }
    }
}
