//! A weight matrix repacked once per decoder for the matrix product of every kernel set.

/// Outputs per panel of [`PackedWeights`]: two AVX vectors.
pub(super) const PANEL: usize = 16;

/// A weight matrix [outputs, inputs] in panels of 16 outputs, each [inputs, 16], 32-byte
/// aligned; the last panel is padded with zeros.
pub(crate) struct PackedWeights {
    floats: Vec<f32>,
    /// Index of the first panel float in `floats` (the alignment offset).
    start: usize,
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
}

impl PackedWeights {
    pub(crate) fn pack(weight: &[f32], inputs: usize) -> Self {
        let outputs = weight.len() / inputs;
        assert_eq!(weight.len(), outputs * inputs);
        let size = outputs.div_ceil(PANEL) * PANEL * inputs;
        let mut floats = vec![0.0f32; size + 8];
        let start = floats.as_ptr().align_offset(32).min(8);
        let panels = &mut floats[start..start + size];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            let panel = &mut panels[(o / PANEL) * PANEL * inputs..];
            for (i, &w) in row.iter().enumerate() {
                panel[i * PANEL + o % PANEL] = w;
            }
        }
        Self {
            floats,
            start,
            inputs,
            outputs,
        }
    }

    /// The panels, one after the other, each `PANEL × inputs` floats.
    pub(super) fn panels(&self) -> &[f32] {
        let size = self.outputs.div_ceil(PANEL) * PANEL * self.inputs;
        &self.floats[self.start..self.start + size]
    }
}
