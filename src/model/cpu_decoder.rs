//! Sampling forward passes of an f32 or bf16 model on a CPU, in plain Rust: the
//! prompts, then the decode steps.
//!
//! A decode step feeds one token per row: every matrix is tiny. Through libtorch such
//! a step is about 250 kernels, and at these sizes each kernel's fixed dispatch and
//! allocation cost is as large as its arithmetic. Here a pass is a loop over the fed
//! tokens; matrix products (reading the weights where the model keeps them), attention's dot
//! products and weighted sums, SiLU and softmax run in the kernel set the decoder was
//! made with (`cpu_kernels/`: AVX2/FMA, or portable Rust). Prompts go through the same
//! code, all their tokens at once, which keeps every thread's work on its own cache
//! rows and off libtorch.
//!
//! The arithmetic is the transformer's (`transformer.rs`), in f32; `tests/sample.rs`
//! checks that both paths give the same tokens and log-probs.

use super::cpu_kernels::{Elements, KernelSet, Matrix, PackedWeights};
use super::transformer::{LayerView, LinearView, NormView, Transformer};
use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};

/// A copy, in f32, of a small CPU tensor (a norm's scale, a bias) of the kinds the
/// decoder reads.
fn floats(tensor: &Tensor) -> Option<Vec<f32>> {
    readable(tensor)?;
    Vec::<f32>::try_from(tensor.to_kind(Kind::Float).reshape(-1)).ok()
}

/// f32 and bf16 tensors on the CPU, with elements.
fn readable(tensor: &Tensor) -> Option<()> {
    let kind_ok = matches!(tensor.kind(), Kind::Float | Kind::BFloat16);
    (kind_ok && tensor.device() == Device::Cpu && tensor.numel() > 0).then_some(())
}

/// The elements of a 2-D weight where the tensor keeps them, borrowed for as long as
/// the tensor is.
///
/// Sound because a decoder lives only inside one `generate` call, which borrows the
/// model: nothing writes the weights while it runs (training and sampling take
/// turns on one thread), and the tensor cannot be freed while borrowed.
fn matrix(tensor: &Tensor) -> Option<Matrix<'_>> {
    readable(tensor)?;
    let &[_, inputs] = tensor.size().as_slice() else {
        return None;
    };
    if !tensor.is_contiguous() {
        return None;
    }
    let (ptr, len) = (tensor.data_ptr(), tensor.numel());
    // SAFETY: a contiguous CPU tensor of `len` elements of this kind starts at `ptr`
    // and outlives the borrow (see above).
    let elements = unsafe {
        match tensor.kind() {
            Kind::Float => Elements::F32(std::slice::from_raw_parts(ptr as *const f32, len)),
            _ => Elements::Bf16(std::slice::from_raw_parts(ptr as *const u16, len)),
        }
    };
    Some(Matrix::new(elements, inputs as usize))
}

/// A weight matrix, read in place (large models) or packed once (small ones), and
/// its bias.
struct Projection<'m> {
    weight: Stored<'m>,
    bias: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
}

enum Stored<'m> {
    InPlace(Matrix<'m>),
    Packed(PackedWeights),
}

impl<'m> Projection<'m> {
    fn new(linear: &LinearView<'m>, pack: bool) -> Option<Self> {
        let bias = match linear.bias {
            Some(bias) => Some(floats(bias)?),
            None => None,
        };
        let projection = Self::of(linear.weight, bias, pack)?;
        projection
            .bias
            .as_ref()
            .is_none_or(|b| b.len() == projection.outputs)
            .then_some(projection)
    }

    fn of(weight: &'m Tensor, bias: Option<Vec<f32>>, pack: bool) -> Option<Self> {
        let matrix = matrix(weight)?;
        let (inputs, outputs) = (matrix.inputs, matrix.outputs);
        let weight = if pack {
            Stored::Packed(PackedWeights::pack(&floats(weight)?, inputs))
        } else {
            Stored::InPlace(matrix)
        };
        Some(Self {
            weight,
            bias,
            inputs,
            outputs,
        })
    }

    /// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ + bias.
    fn apply(&self, kernels: Kernels, x: &[f32], out: &mut Vec<f32>) {
        let (inputs, outputs) = (self.inputs, self.outputs);
        out.clear();
        out.resize(x.len() / inputs * outputs, 0.0);
        match &self.weight {
            Stored::InPlace(matrix) => kernels.set.matmul(x, *matrix, out, kernels.parallel),
            Stored::Packed(packed) => kernels.set.matmul_packed(x, packed, out),
        }
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(outputs) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
    }
}

/// Weights up to this many bytes are packed into panels for each decoder (see
/// `cpu_kernels`): cheap at this size, and faster than reading them in place.
pub(crate) const PACK_UP_TO_BYTES: usize = 32 << 20;

/// Bytes of the matrices a decode step reads (every projection and the head).
pub(crate) fn weight_bytes(weights: &super::transformer::WeightsView) -> usize {
    let mut tensors = vec![weights.embed];
    for layer in &weights.layers {
        tensors.extend([
            layer.q.weight,
            layer.k.weight,
            layer.v.weight,
            layer.o.weight,
        ]);
        tensors.extend([layer.gate.weight, layer.up.weight, layer.down.weight]);
    }
    tensors.extend(weights.lm_head.as_ref().map(|head| head.weight));
    tensors
        .iter()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum()
}

/// The kernel set, and whether matrix products split their outputs over threads.
#[derive(Clone, Copy)]
struct Kernels {
    set: KernelSet,
    parallel: bool,
}

struct Norm {
    weight: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(norm: &NormView) -> Option<Self> {
        Some(Self {
            weight: floats(norm.weight)?,
            eps: norm.eps as f32,
        })
    }

    /// `out` = RMSNorm of each row of `x` [rows, width], width being the weight's
    /// length (the hidden size, or `head_dim` for Qwen3's per-head norms).
    fn apply(&self, kernels: KernelSet, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.resize(x.len(), 0.0);
        let width = self.weight.len();
        for (row, normed) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mean_square = kernels.dot(row, row) / width as f32;
            let scale = 1.0 / (mean_square + self.eps).sqrt();
            for ((n, v), w) in normed.iter_mut().zip(row).zip(&self.weight) {
                *n = w * (v * scale);
            }
        }
    }
}

/// `None` inside when the model has no such norm; `None` outside when it has one
/// that cannot be read.
fn optional_norm(norm: &Option<NormView>) -> Option<Option<Norm>> {
    match norm {
        Some(norm) => Norm::new(norm).map(Some),
        None => Some(None),
    }
}

struct Layer<'m> {
    input_norm: Norm,
    q: Projection<'m>,
    k: Projection<'m>,
    v: Projection<'m>,
    o: Projection<'m>,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    post_norm: Norm,
    gate: Projection<'m>,
    up: Projection<'m>,
    down: Projection<'m>,
}

impl<'m> Layer<'m> {
    fn new(layer: &LayerView<'m>, pack: bool) -> Option<Self> {
        Some(Self {
            input_norm: Norm::new(&layer.input_norm)?,
            q: Projection::new(&layer.q, pack)?,
            k: Projection::new(&layer.k, pack)?,
            v: Projection::new(&layer.v, pack)?,
            o: Projection::new(&layer.o, pack)?,
            q_norm: optional_norm(&layer.q_norm)?,
            k_norm: optional_norm(&layer.k_norm)?,
            post_norm: Norm::new(&layer.post_norm)?,
            gate: Projection::new(&layer.gate, pack)?,
            up: Projection::new(&layer.up, pack)?,
            down: Projection::new(&layer.down, pack)?,
        })
    }
}

/// Keys and values of every row, per layer [rows, kv_heads, capacity, head_dim]; a
/// row's key at position p sits in slot p.
pub(crate) struct CpuCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    capacity: usize,
    /// Positions each row holds.
    lens: Vec<usize>,
    /// Activations of a step, kept between steps so that decoding allocates nothing.
    work: Work,
}

#[derive(Default)]
struct Work {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    head_normed: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
}

pub(crate) struct CpuDecoder<'m> {
    /// The kernels every pass runs (the picks of its logits use the same set).
    kernels: Kernels,
    embed: Matrix<'m>,
    layers: Vec<Layer<'m>>,
    norm: Norm,
    head: Projection<'m>,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    /// cos and signed sin per position [positions, head_dim] (see `Rotary::cos_sin`).
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl<'m> CpuDecoder<'m> {
    /// A decoder for positions below `max_positions` that runs `kernels`, or `None` when
    /// the model is not an f32 or bf16 model on the CPU. Past [`PACK_UP_TO_BYTES`] it
    /// reads the weights where the model keeps them; below, it packs a copy. With
    /// `parallel`, each matrix product splits its outputs over rayon's threads (one
    /// decoder for the whole batch); without, a decoder runs on one thread (one per
    /// shard of rows).
    pub(crate) fn new(
        model: &'m Transformer,
        max_positions: usize,
        kernels: KernelSet,
        parallel: bool,
    ) -> Option<Self> {
        let config = &model.config;
        let (hidden, vocab) = (config.hidden_size, config.vocab_size);
        let weights = model.weights();
        let embed = matrix(weights.embed)?;
        // Small models go faster packed, and their copy is small.
        let pack = !parallel && weight_bytes(&weights) <= PACK_UP_TO_BYTES;
        let head = match &weights.lm_head {
            Some(head) => Projection::new(head, pack)?,
            None => Projection::of(weights.embed, None, pack)?,
        };
        let layers = weights
            .layers
            .iter()
            .map(|layer| Layer::new(layer, pack))
            .collect::<Option<Vec<_>>>()?;
        let positions = Tensor::arange(max_positions as i64, (Kind::Int64, Device::Cpu));
        let (cos, sin) = model.rotary_tables(&positions.unsqueeze(0), Kind::Float);
        Some(Self {
            kernels: Kernels {
                set: kernels,
                parallel,
            },
            embed,
            layers,
            norm: Norm::new(&weights.norm)?,
            head,
            hidden,
            heads: config.num_attention_heads,
            kv_heads: config.kv_heads(),
            head_dim: config.head_dim(),
            vocab,
            cos: Vec::try_from(cos.reshape(-1)).ok()?,
            sin: Vec::try_from(sin.reshape(-1)).ok()?,
        })
    }

    /// The kernels this decoder runs.
    pub(crate) fn kernels(&self) -> KernelSet {
        self.kernels.set
    }

    /// An empty cache for `rows` rows of up to `capacity` positions each.
    pub(crate) fn cache(&self, rows: usize, capacity: usize) -> CpuCache {
        let size = rows * self.kv_heads * capacity * self.head_dim;
        CpuCache {
            keys: (0..self.layers.len()).map(|_| vec![0.0; size]).collect(),
            values: (0..self.layers.len()).map(|_| vec![0.0; size]).collect(),
            capacity,
            lens: vec![0; rows],
            work: Work::default(),
        }
    }

    /// Feeds `tokens[i]`, one or more, to cache row `rows[i]` after what the row holds,
    /// and returns the next-token logits after each row's last token [rows, vocab]. A
    /// prompt is one call with all its tokens (or several, in pieces); a decode step,
    /// one token per row. `rows` are distinct: a row's positions count from what it
    /// held before the call.
    pub(crate) fn feed(
        &self,
        cache: &mut CpuCache,
        rows: &[usize],
        tokens: &[&[i64]],
    ) -> Result<Vec<f32>> {
        // One entry per token: its row and position.
        let mut entries = Vec::new();
        let mut x = Vec::new();
        let mut embedding = Vec::with_capacity(self.hidden);
        for (&row, row_tokens) in rows.iter().zip(tokens) {
            let start = cache.lens[row];
            if row_tokens.is_empty() || start + row_tokens.len() > cache.capacity {
                bail!(
                    "cannot feed {} token(s) to a row holding {start} of {} positions",
                    row_tokens.len(),
                    cache.capacity
                );
            }
            for (offset, &token) in row_tokens.iter().enumerate() {
                let token = usize::try_from(token)
                    .ok()
                    .filter(|&t| t < self.vocab)
                    .with_context(|| format!("token id {token} is outside the vocabulary"))?;
                self.embed.row_into(token, &mut embedding);
                x.extend_from_slice(&embedding);
                entries.push(Entry {
                    row,
                    position: start + offset,
                });
            }
        }
        let mut work = std::mem::take(&mut cache.work);
        let (kernels, set) = (self.kernels, self.kernels.set);
        for (index, layer) in self.layers.iter().enumerate() {
            layer.input_norm.apply(set, &x, &mut work.normed);
            layer.q.apply(kernels, &work.normed, &mut work.q);
            layer.k.apply(kernels, &work.normed, &mut work.k);
            layer.v.apply(kernels, &work.normed, &mut work.v);
            // Qwen3: every head of q and k normalised over head_dim, before rotary.
            for (norm, x) in [(&layer.q_norm, &mut work.q), (&layer.k_norm, &mut work.k)] {
                if let Some(norm) = norm {
                    norm.apply(set, x, &mut work.head_normed);
                    std::mem::swap(x, &mut work.head_normed);
                }
            }
            self.rotate(&mut work.q, &entries);
            self.rotate(&mut work.k, &entries);
            self.store(cache, index, &entries, &work.k, &work.v);
            self.attend(cache, index, &entries, &mut work);
            layer.o.apply(kernels, &work.attended, &mut work.projected);
            add(&mut x, &work.projected);
            layer.post_norm.apply(set, &x, &mut work.normed);
            layer.gate.apply(kernels, &work.normed, &mut work.gate);
            layer.up.apply(kernels, &work.normed, &mut work.up);
            set.silu_times(&mut work.gate, &work.up);
            layer.down.apply(kernels, &work.gate, &mut work.projected);
            add(&mut x, &work.projected);
        }
        // Only each row's last token needs logits.
        let mut last = Vec::with_capacity(rows.len() * self.hidden);
        let mut end = 0;
        for (&row, row_tokens) in rows.iter().zip(tokens) {
            end += row_tokens.len();
            last.extend_from_slice(&x[(end - 1) * self.hidden..][..self.hidden]);
            cache.lens[row] += row_tokens.len();
        }
        self.norm.apply(set, &last, &mut work.normed);
        let mut logits = Vec::new();
        self.head.apply(kernels, &work.normed, &mut logits);
        cache.work = work;
        Ok(logits)
    }

    /// Rotary embedding of every head of `x` [entries, heads × head_dim], in place.
    fn rotate(&self, x: &mut [f32], entries: &[Entry]) {
        let (dim, half) = (self.head_dim, self.head_dim / 2);
        let heads = x.len() / entries.len() / dim;
        let mut rotated = vec![0.0f32; dim];
        for (row, &Entry { position, .. }) in x.chunks_exact_mut(heads * dim).zip(entries) {
            let (cos, sin) = (
                &self.cos[position * dim..][..dim],
                &self.sin[position * dim..][..dim],
            );
            for head in row.chunks_exact_mut(dim) {
                let (first, second) = head.split_at(half);
                // Each half turns with the other; `sin` carries the sign.
                for i in 0..half {
                    rotated[i] = first[i] * cos[i] + second[i] * sin[i];
                    rotated[half + i] = second[i] * cos[half + i] + first[i] * sin[half + i];
                }
                head.copy_from_slice(&rotated);
            }
        }
    }

    /// Writes the new keys and values [entries, kv_heads × head_dim] at their positions.
    fn store(&self, cache: &mut CpuCache, layer: usize, entries: &[Entry], k: &[f32], v: &[f32]) {
        let dim = self.head_dim;
        for (i, &Entry { row, position }) in entries.iter().enumerate() {
            for head in 0..self.kv_heads {
                let at = self.cache_offset(cache, row, head) + position * dim;
                let from = (i * self.kv_heads + head) * dim;
                cache.keys[layer][at..at + dim].copy_from_slice(&k[from..from + dim]);
                cache.values[layer][at..at + dim].copy_from_slice(&v[from..from + dim]);
            }
        }
    }

    fn cache_offset(&self, cache: &CpuCache, row: usize, kv_head: usize) -> usize {
        (row * self.kv_heads + kv_head) * cache.capacity * self.head_dim
    }

    /// Softmax attention of each query head of `work.q` over its row's keys up to its
    /// own position, into `work.attended` [entries, heads × head_dim].
    fn attend(&self, cache: &CpuCache, layer: usize, entries: &[Entry], work: &mut Work) {
        let Work {
            q,
            attended: out,
            scores,
            ..
        } = work;
        let dim = self.head_dim;
        let groups = self.heads / self.kv_heads;
        let scale = 1.0 / (dim as f32).sqrt();
        out.clear();
        out.resize(q.len(), 0.0);
        for (i, &Entry { row, position }) in entries.iter().enumerate() {
            let len = position + 1;
            for head in 0..self.heads {
                let base = self.cache_offset(cache, row, head / groups);
                let keys = &cache.keys[layer][base..base + len * dim];
                let values = &cache.values[layer][base..base + len * dim];
                let query = &q[(i * self.heads + head) * dim..][..dim];
                scores.resize(len, 0.0);
                self.kernels.set.dots(query, keys, scores);
                self.kernels.set.softmax(scores, scale);
                let output = &mut out[(i * self.heads + head) * dim..][..dim];
                self.kernels.set.weighted_sum(scores, values, output);
            }
        }
    }
}

/// A token being fed: its cache row and position.
#[derive(Clone, Copy)]
struct Entry {
    row: usize,
    position: usize,
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
