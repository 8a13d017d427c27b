//! Keys and values of past tokens, one (k, v) pair per layer, each
//! [batch, kv_heads, past, head_dim]. Rows can be dropped when they finish so that
//! finished completions stop costing compute.

use tch::Tensor;

pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers)
                .map(|_| (Tensor::new(), Tensor::new()))
                .collect(),
            len: 0,
        }
    }

    /// Number of positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut (Tensor, Tensor) {
        &mut self.layers[layer]
    }

    pub(crate) fn advance(&mut self, positions: i64) {
        self.len += positions;
    }

    /// Keeps only the batch rows in `rows` (an int64 index tensor), in that order.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for (k, v) in &mut self.layers {
            if k.numel() > 0 {
                *k = k.index_select(0, rows);
                *v = v.index_select(0, rows);
            }
        }
    }
}
