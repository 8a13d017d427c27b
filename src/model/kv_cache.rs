//! Keys and values of past tokens, one buffer pair per layer, each
//! [batch, kv_heads, capacity, head_dim]. New positions are written in place, so a
//! decode step copies only its own token instead of the whole history. Rows can be
//! dropped when they finish so that finished completions stop costing compute.

use tch::Tensor;

pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
    /// Positions to allocate on first use (grown by doubling when exceeded).
    capacity_hint: i64,
}

pub(crate) struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

impl LayerCache {
    /// Writes `k`/`v` [batch, kv_heads, new, head_dim] after `past` positions and
    /// returns views of everything held so far.
    pub(crate) fn append(
        &mut self,
        past: i64,
        k: &Tensor,
        v: &Tensor,
        capacity_hint: i64,
    ) -> (Tensor, Tensor) {
        let new = k.size()[2];
        let needed = past + new;
        let capacity = if self.keys.numel() == 0 {
            0
        } else {
            self.keys.size()[2]
        };
        if needed > capacity {
            let mut shape = k.size();
            shape[2] = needed.max(capacity * 2).max(capacity_hint);
            let grow = |old: &Tensor| {
                let buffer = Tensor::zeros(shape.as_slice(), (k.kind(), k.device()));
                if past > 0 {
                    buffer.narrow(2, 0, past).copy_(&old.narrow(2, 0, past));
                }
                buffer
            };
            self.keys = grow(&self.keys);
            self.values = grow(&self.values);
        }
        self.keys.narrow(2, past, new).copy_(k);
        self.values.narrow(2, past, new).copy_(v);
        (
            self.keys.narrow(2, 0, needed),
            self.values.narrow(2, 0, needed),
        )
    }
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self::with_capacity(layers, 0)
    }

    /// A cache that allocates room for `positions` at once (prompt + new tokens).
    pub fn with_capacity(layers: usize, positions: usize) -> Self {
        Self {
            layers: (0..layers)
                .map(|_| LayerCache {
                    keys: Tensor::new(),
                    values: Tensor::new(),
                })
                .collect(),
            len: 0,
            capacity_hint: positions as i64,
        }
    }

    /// Number of positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn capacity_hint(&self) -> i64 {
        self.capacity_hint
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }

    pub(crate) fn advance(&mut self, positions: i64) {
        self.len += positions;
    }

    /// Keeps only the batch rows in `rows` (an int64 index tensor), in that order.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for layer in &mut self.layers {
            if layer.keys.numel() > 0 {
                layer.keys = layer.keys.index_select(0, rows);
                layer.values = layer.values.index_select(0, rows);
            }
        }
    }
}
