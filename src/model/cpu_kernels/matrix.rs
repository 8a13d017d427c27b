//! A weight matrix as the model stores it: row-major [outputs, inputs], f32 or bf16,
//! read in place. Nothing is repacked or copied, so sampling costs no second copy
//! of the weights and no packing time, and bf16 weights are read at half the bytes
//! (each widened to f32 in registers: bf16 is the top half of an f32).

/// The elements of a matrix, borrowed.
#[derive(Clone, Copy)]
pub(crate) enum Elements<'m> {
    F32(&'m [f32]),
    /// Raw bf16 bits.
    Bf16(&'m [u16]),
}

#[derive(Clone, Copy)]
pub(crate) struct Matrix<'m> {
    pub(crate) elements: Elements<'m>,
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
}

impl<'m> Matrix<'m> {
    pub(crate) fn new(elements: Elements<'m>, inputs: usize) -> Self {
        let len = match elements {
            Elements::F32(e) => e.len(),
            Elements::Bf16(e) => e.len(),
        };
        assert!(
            inputs > 0 && len.is_multiple_of(inputs),
            "{len} elements, {inputs} inputs"
        );
        Self {
            elements,
            inputs,
            outputs: len / inputs,
        }
    }

    /// Row `row` (one output's weights) widened to f32, into `out`.
    pub(crate) fn row_into(&self, row: usize, out: &mut Vec<f32>) {
        let range = row * self.inputs..(row + 1) * self.inputs;
        out.clear();
        match self.elements {
            Elements::F32(e) => out.extend_from_slice(&e[range]),
            Elements::Bf16(e) => out.extend(e[range].iter().map(|&b| bf16_to_f32(b))),
        }
    }
}

pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The nearest bf16 of `x` (ties to even), for tests and for writing bf16 weights.
#[cfg(test)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}
