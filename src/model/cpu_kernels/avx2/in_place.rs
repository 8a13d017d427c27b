//! The AVX2 product against weights in the model's own row-major layout (f32, or bf16
//! widened in registers): each step loads 8 inputs of 4 weight rows and of 2 input
//! rows and does 8 FMAs; the lanes of each sum are added once at the end. The tiles
//! are written out by hand, not generic over their size: an unoptimised build (the
//! dev profile) leaves array-held sums in memory, which costs several times the speed.

use super::super::Columns;
use super::super::matrix::bf16_to_f32;
use super::{horizontal_sum, sums_of_8};
use std::arch::x86_64::*;
use std::ops::Range;

/// A tile: 2 rows × 4 outputs (see [`tile_2x4`]); each weight vector loaded serves
/// both rows.
const TILE_ROWS: usize = 2;
const TILE_OUTPUTS: usize = 4;

/// A weight element the tiles read 8 at a time, widened to f32.
pub(super) trait Element: Copy {
    /// # Safety
    /// 8 elements from `at` on must be readable, on a CPU with AVX2.
    unsafe fn load8(at: *const Self) -> __m256;
    fn widen(self) -> f32;
}

impl Element for f32 {
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8(at: *const f32) -> __m256 {
        // SAFETY: the caller's promise.
        unsafe { _mm256_loadu_ps(at) }
    }

    fn widen(self) -> f32 {
        self
    }
}

impl Element for u16 {
    /// bf16 bits: zero-extended to 32 bits and shifted into an f32's top half.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8(at: *const u16) -> __m256 {
        // SAFETY: the caller's promise.
        let half = unsafe { _mm_loadu_si128(at.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(half)))
    }

    fn widen(self) -> f32 {
        bf16_to_f32(self)
    }
}

/// Outputs `range` for every row: tiles of `TILE_ROWS` rows × `TILE_OUTPUTS` outputs,
/// then the leftover outputs one at a time.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tiles<E: Element>(
    x: &[f32],
    rows: usize,
    inputs: usize,
    w: *const E,
    out: Columns,
    range: Range<usize>,
) {
    let x = x.as_ptr();
    let mut output = range.start;
    // SAFETY (all calls): rows `row..row + R` of `x` and weight rows `output..output + O`
    // lie inside their slices (the caller checked the sizes); writes stay in `range`.
    unsafe {
        while output + TILE_OUTPUTS <= range.end {
            let mut row = 0;
            while row < rows {
                let (x, w) = (x.add(row * inputs), w.add(output * inputs));
                match rows - row {
                    1 => tile_1x4(x, inputs, w, out, (row, output)),
                    _ => tile_2x4(x, inputs, w, out, (row, output)),
                }
                row += TILE_ROWS;
            }
            output += TILE_OUTPUTS;
        }
        for output in output..range.end {
            let mut row = 0;
            while row < rows {
                let (x, w) = (x.add(row * inputs), w.add(output * inputs));
                match rows - row {
                    1 => tile::<1, 1, E>(x, inputs, w, out, (row, output)),
                    _ => tile::<TILE_ROWS, 1, E>(x, inputs, w, out, (row, output)),
                }
                row += TILE_ROWS;
            }
        }
    }
}

/// The main tile, 2 rows × 4 outputs, written out: the generic [`tile`] keeps its
/// sums in arrays, which an unoptimised build leaves in memory. (3 rows × 4 outputs
/// would fill all 16 registers and measured slower.)
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_2x4<E: Element>(
    x: *const f32,
    inputs: usize,
    w: *const E,
    out: Columns,
    (first_row, first_output): (usize, usize),
) {
    let vectors = inputs / 8 * 8;
    let zero = _mm256_setzero_ps();
    let (mut s00, mut s01, mut s02, mut s03) = (zero, zero, zero, zero);
    let (mut s10, mut s11, mut s12, mut s13) = (zero, zero, zero, zero);
    // SAFETY: rows of `x` and of `w` hold `inputs` elements each (the caller's promise).
    unsafe {
        let (x0, x1) = (x, x.add(inputs));
        let (w0, w1, w2, w3) = (w, w.add(inputs), w.add(2 * inputs), w.add(3 * inputs));
        let mut i = 0;
        while i < vectors {
            let (a0, a1, a2, a3) = (
                E::load8(w0.add(i)),
                E::load8(w1.add(i)),
                E::load8(w2.add(i)),
                E::load8(w3.add(i)),
            );
            let v = _mm256_loadu_ps(x0.add(i));
            s00 = _mm256_fmadd_ps(v, a0, s00);
            s01 = _mm256_fmadd_ps(v, a1, s01);
            s02 = _mm256_fmadd_ps(v, a2, s02);
            s03 = _mm256_fmadd_ps(v, a3, s03);
            let v = _mm256_loadu_ps(x1.add(i));
            s10 = _mm256_fmadd_ps(v, a0, s10);
            s11 = _mm256_fmadd_ps(v, a1, s11);
            s12 = _mm256_fmadd_ps(v, a2, s12);
            s13 = _mm256_fmadd_ps(v, a3, s13);
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            sums_of_8([s00, s01, s02, s03, s10, s11, s12, s13]),
        );
        finish(
            x,
            inputs,
            w,
            out,
            (first_row, first_output),
            (vectors, 4),
            &mut lanes,
        );
    }
}

/// One row × 4 outputs (a batch's odd last row), written out as [`tile_2x4`].
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_1x4<E: Element>(
    x: *const f32,
    inputs: usize,
    w: *const E,
    out: Columns,
    (first_row, first_output): (usize, usize),
) {
    let vectors = inputs / 8 * 8;
    let zero = _mm256_setzero_ps();
    let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
    // SAFETY: as in `tile_2x4`.
    unsafe {
        let (w0, w1, w2, w3) = (w, w.add(inputs), w.add(2 * inputs), w.add(3 * inputs));
        let mut i = 0;
        while i < vectors {
            let v = _mm256_loadu_ps(x.add(i));
            s0 = _mm256_fmadd_ps(v, E::load8(w0.add(i)), s0);
            s1 = _mm256_fmadd_ps(v, E::load8(w1.add(i)), s1);
            s2 = _mm256_fmadd_ps(v, E::load8(w2.add(i)), s2);
            s3 = _mm256_fmadd_ps(v, E::load8(w3.add(i)), s3);
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            sums_of_8([s0, s1, s2, s3, zero, zero, zero, zero]),
        );
        finish(
            x,
            inputs,
            w,
            out,
            (first_row, first_output),
            (vectors, 4),
            &mut lanes[..4],
        );
    }
}

/// Adds the inputs past the last whole vector to each (row, output) total of a tile
/// with `outputs` outputs per row, and writes the totals.
///
/// # Safety
/// As for the tiles.
#[target_feature(enable = "avx2,fma")]
unsafe fn finish<E: Element>(
    x: *const f32,
    inputs: usize,
    w: *const E,
    out: Columns,
    (first_row, first_output): (usize, usize),
    (vectors, outputs): (usize, usize),
    totals: &mut [f32],
) {
    for (k, total) in totals.iter_mut().enumerate() {
        let (r, o) = (k / outputs, k % outputs);
        // SAFETY: the caller's promise.
        unsafe {
            for i in vectors..inputs {
                *total += *x.add(r * inputs + i) * (*w.add(o * inputs + i)).widen();
            }
            out.write(first_row + r, first_output + o, *total);
        }
    }
}

/// `R` rows × `O` outputs of the product: 8 inputs at a time, `O` weight vectors
/// loaded once and used by every row, one accumulator per (row, output) summed
/// across its lanes at the end.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const O: usize, E: Element>(
    x: *const f32,
    inputs: usize,
    w: *const E,
    out: Columns,
    (first_row, first_output): (usize, usize),
) {
    let vectors = inputs / 8 * 8;
    let mut sums = [[_mm256_setzero_ps(); O]; R];
    // SAFETY: rows of `x` and of `w` hold `inputs` elements each (the caller's promise).
    unsafe {
        for i in (0..vectors).step_by(8) {
            let weights: [__m256; O] = std::array::from_fn(|o| E::load8(w.add(o * inputs + i)));
            for (r, row_sums) in sums.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * inputs + i));
                for (sum, weight) in row_sums.iter_mut().zip(&weights) {
                    *sum = _mm256_fmadd_ps(xv, *weight, *sum);
                }
            }
        }
        for (r, row_sums) in sums.iter().enumerate() {
            for (o, sum) in row_sums.iter().enumerate() {
                let (x, w) = (x.add(r * inputs), w.add(o * inputs));
                let at = (first_row + r, first_output + o);
                finish(
                    x,
                    inputs,
                    w,
                    out,
                    at,
                    (vectors, 1),
                    &mut [horizontal_sum(*sum)],
                );
            }
        }
    }
}
