//! Decode steps of an f32 model on a CPU, in plain Rust.
//!
//! A decode step feeds one token per row: every matrix is tiny. Through libtorch such
//! a step is about 250 kernels, and at these sizes each kernel's fixed dispatch and
//! allocation cost is as large as its arithmetic. Here each step is a loop over rows
//! that reads the weights in place; matrix products and attention's dot products and
//! weighted sums run in AVX2/FMA kernels (`cpu_kernels.rs`). The prompt still goes
//! through libtorch, whose kernels are efficient on its large matrices; its KV cache
//! is copied over once ([`CpuDecoder::import_cache`]).
//!
//! The arithmetic is the transformer's (`transformer.rs`), in f32; `tests/sample.rs`
//! checks that both paths give the same tokens and log-probs.

use super::cpu_kernels;
use super::kv_cache::KvCache;
use super::transformer::{Attention, DecoderLayer, Mlp, RmsNorm, Transformer};
use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor, nn};

/// Borrows the floats of a contiguous f32 CPU tensor.
fn floats(tensor: &Tensor) -> Option<&[f32]> {
    let usable = tensor.kind() == Kind::Float
        && tensor.device() == Device::Cpu
        && tensor.is_contiguous()
        && tensor.numel() > 0;
    // SAFETY: a contiguous f32 CPU tensor holds `numel` floats from `data_ptr` on, and
    // the slice borrows the tensor. Sampling only reads weights; nothing writes to them
    // while a decoder lives (the model is borrowed for as long).
    usable.then(|| unsafe {
        std::slice::from_raw_parts(tensor.data_ptr() as *const f32, tensor.numel())
    })
}

/// A weight matrix [outputs, inputs] and its bias, as `nn::Linear` holds them.
struct Projection<'m> {
    weight: &'m [f32],
    bias: Option<&'m [f32]>,
    inputs: usize,
    outputs: usize,
}

impl<'m> Projection<'m> {
    fn new(linear: &'m nn::Linear) -> Option<Self> {
        let &[outputs, inputs] = linear.ws.size().as_slice() else {
            return None;
        };
        let bias = match &linear.bs {
            Some(bias) => Some(floats(bias)?),
            None => None,
        };
        Some(Self::from_parts(
            floats(&linear.ws)?,
            bias,
            inputs as usize,
            outputs as usize,
        ))
    }

    fn from_parts(
        weight: &'m [f32],
        bias: Option<&'m [f32]>,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        assert_eq!(weight.len(), inputs * outputs);
        assert!(bias.is_none_or(|b| b.len() == outputs));
        Self {
            weight,
            bias,
            inputs,
            outputs,
        }
    }

    /// `out` [rows, outputs] = `x` [rows, inputs] · weightᵀ + bias.
    fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        let rows = x.len() / self.inputs;
        out.clear();
        out.resize(rows * self.outputs, 0.0);
        cpu_kernels::matmul_transposed(x, self.weight, self.inputs, out);
        if let Some(bias) = self.bias {
            for row in out.chunks_exact_mut(self.outputs) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
    }
}

struct Norm<'m> {
    weight: &'m [f32],
    eps: f32,
}

impl<'m> Norm<'m> {
    fn new(norm: &'m RmsNorm) -> Option<Self> {
        Some(Self {
            weight: floats(&norm.weight)?,
            eps: norm.eps as f32,
        })
    }

    /// `out` = RMSNorm of each row of `x` [rows, hidden].
    fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.resize(x.len(), 0.0);
        let hidden = self.weight.len();
        for (row, normed) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / hidden as f32;
            let scale = 1.0 / (mean_square + self.eps).sqrt();
            for ((n, v), w) in normed.iter_mut().zip(row).zip(self.weight) {
                *n = w * (v * scale);
            }
        }
    }
}

struct Layer<'m> {
    input_norm: Norm<'m>,
    q: Projection<'m>,
    k: Projection<'m>,
    v: Projection<'m>,
    o: Projection<'m>,
    post_norm: Norm<'m>,
    gate: Projection<'m>,
    up: Projection<'m>,
    down: Projection<'m>,
}

impl<'m> Layer<'m> {
    fn new(layer: &'m DecoderLayer) -> Option<Self> {
        let Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            ..
        } = &layer.self_attn;
        let Mlp {
            gate_proj,
            up_proj,
            down_proj,
        } = &layer.mlp;
        Some(Self {
            input_norm: Norm::new(&layer.input_layernorm)?,
            q: Projection::new(q_proj)?,
            k: Projection::new(k_proj)?,
            v: Projection::new(v_proj)?,
            o: Projection::new(o_proj)?,
            post_norm: Norm::new(&layer.post_attention_layernorm)?,
            gate: Projection::new(gate_proj)?,
            up: Projection::new(up_proj)?,
            down: Projection::new(down_proj)?,
        })
    }
}

/// Keys and values of every row, per layer [rows, kv_heads, capacity, head_dim],
/// plus where each row's real tokens start (prompts are left-padded).
pub(crate) struct CpuCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    capacity: usize,
    /// Positions held, the same for every row.
    len: usize,
    first_key: Vec<usize>,
    /// Activations of a step, kept between steps so that decoding allocates nothing.
    work: Work,
}

#[derive(Default)]
struct Work {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
}

pub(crate) struct CpuDecoder<'m> {
    embed: &'m [f32],
    layers: Vec<Layer<'m>>,
    norm: Norm<'m>,
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
    /// Whether this CPU can run the decoder (it needs AVX2 and FMA).
    pub(crate) fn available() -> bool {
        cpu_kernels::available()
    }

    /// A decoder for positions below `max_positions`, or `None` when the model is not
    /// an f32 model on the CPU with contiguous weights or the CPU lacks AVX2/FMA.
    pub(crate) fn new(model: &'m Transformer, max_positions: usize) -> Option<Self> {
        if !cpu_kernels::available() {
            return None;
        }
        let config = &model.config;
        let (hidden, vocab) = (config.hidden_size, config.vocab_size);
        let embed = floats(&model.embed_tokens.ws)?;
        let head = match &model.lm_head {
            Some(head) => Projection::new(head)?,
            None => Projection::from_parts(embed, None, hidden, vocab),
        };
        let layers = model
            .layers
            .iter()
            .map(Layer::new)
            .collect::<Option<Vec<_>>>()?;
        let positions = Tensor::arange(max_positions as i64, (Kind::Int64, Device::Cpu));
        let (cos, sin) = model.rotary.cos_sin(&positions.unsqueeze(0), Kind::Float);
        Some(Self {
            embed,
            layers,
            norm: Norm::new(&model.norm)?,
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

    /// Copies batch rows `rows` of libtorch's cache after the prompt; `pad[i]` is the
    /// left padding of row `rows.start + i`.
    pub(crate) fn import_cache(
        &self,
        cache: &KvCache,
        rows: std::ops::Range<usize>,
        pad: &[usize],
    ) -> Result<CpuCache> {
        let (first, count) = (rows.start as i64, rows.len() as i64);
        let copy = |t: &Tensor| -> Result<Vec<f32>> {
            let rows = t.narrow(0, first, count).to_kind(Kind::Float);
            Ok(Vec::try_from(rows.contiguous().reshape(-1))?)
        };
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut capacity = 0;
        for layer in 0..self.layers.len() {
            let (k, v) = cache.layer_tensors(layer);
            capacity = k.size()[2] as usize;
            keys.push(copy(k)?);
            values.push(copy(v)?);
        }
        Ok(CpuCache {
            keys,
            values,
            capacity,
            len: cache.len() as usize,
            first_key: pad.to_vec(),
            work: Work::default(),
        })
    }

    /// Feeds one token per row and returns the next-token logits [rows, vocab].
    /// `rows[i]` is the cache row of batch row i, at `positions[i]`.
    pub(crate) fn step(
        &self,
        cache: &mut CpuCache,
        rows: &[usize],
        tokens: &[i64],
        positions: &[usize],
    ) -> Result<Vec<f32>> {
        if cache.len >= cache.capacity {
            bail!("KV cache full at {} positions", cache.capacity);
        }
        let mut x = Vec::with_capacity(rows.len() * self.hidden);
        for &token in tokens {
            let token = usize::try_from(token)
                .ok()
                .filter(|&t| t < self.vocab)
                .with_context(|| format!("token id {token} is outside the vocabulary"))?;
            x.extend_from_slice(&self.embed[token * self.hidden..][..self.hidden]);
        }
        let mut work = std::mem::take(&mut cache.work);
        for (index, layer) in self.layers.iter().enumerate() {
            layer.input_norm.apply(&x, &mut work.normed);
            layer.q.apply(&work.normed, &mut work.q);
            layer.k.apply(&work.normed, &mut work.k);
            layer.v.apply(&work.normed, &mut work.v);
            self.rotate(&mut work.q, positions);
            self.rotate(&mut work.k, positions);
            self.store(cache, index, rows, &work.k, &work.v);
            self.attend(cache, index, rows, &mut work);
            layer.o.apply(&work.attended, &mut work.projected);
            add(&mut x, &work.projected);
            layer.post_norm.apply(&x, &mut work.normed);
            layer.gate.apply(&work.normed, &mut work.gate);
            layer.up.apply(&work.normed, &mut work.up);
            for (g, u) in work.gate.iter_mut().zip(&work.up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            layer.down.apply(&work.gate, &mut work.projected);
            add(&mut x, &work.projected);
        }
        cache.len += 1;
        self.norm.apply(&x, &mut work.normed);
        let mut logits = Vec::new();
        self.head.apply(&work.normed, &mut logits);
        cache.work = work;
        Ok(logits)
    }

    /// Rotary embedding of every head of `x` [rows, heads × head_dim], in place.
    fn rotate(&self, x: &mut [f32], positions: &[usize]) {
        let (dim, half) = (self.head_dim, self.head_dim / 2);
        let heads = x.len() / positions.len() / dim;
        let mut rotated = vec![0.0f32; dim];
        for (row, &position) in x.chunks_exact_mut(heads * dim).zip(positions) {
            let cos = &self.cos[position * dim..][..dim];
            let sin = &self.sin[position * dim..][..dim];
            for head in row.chunks_exact_mut(dim) {
                for i in 0..dim {
                    rotated[i] = head[i] * cos[i] + head[(i + half) % dim] * sin[i];
                }
                head.copy_from_slice(&rotated);
            }
        }
    }

    /// Writes the new keys and values [rows, kv_heads × head_dim] at position `len`.
    fn store(&self, cache: &mut CpuCache, layer: usize, rows: &[usize], k: &[f32], v: &[f32]) {
        let dim = self.head_dim;
        for (i, &row) in rows.iter().enumerate() {
            for head in 0..self.kv_heads {
                let at = self.cache_offset(cache, row, head) + cache.len * dim;
                let from = (i * self.kv_heads + head) * dim;
                cache.keys[layer][at..at + dim].copy_from_slice(&k[from..from + dim]);
                cache.values[layer][at..at + dim].copy_from_slice(&v[from..from + dim]);
            }
        }
    }

    fn cache_offset(&self, cache: &CpuCache, row: usize, kv_head: usize) -> usize {
        (row * self.kv_heads + kv_head) * cache.capacity * self.head_dim
    }

    /// Softmax attention of each query head of `work.q` over its row's real keys, the
    /// new one included, into `work.attended` [rows, heads × head_dim].
    fn attend(&self, cache: &CpuCache, layer: usize, rows: &[usize], work: &mut Work) {
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
        for (i, &row) in rows.iter().enumerate() {
            let (first, len) = (cache.first_key[row], cache.len + 1);
            for head in 0..self.heads {
                let base = self.cache_offset(cache, row, head / groups);
                let keys = &cache.keys[layer][base + first * dim..base + len * dim];
                let values = &cache.values[layer][base + first * dim..base + len * dim];
                let query = &q[(i * self.heads + head) * dim..][..dim];
                scores.resize(len - first, 0.0);
                cpu_kernels::dots(query, keys, scores);
                scores.iter_mut().for_each(|s| *s *= scale);
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                scores.iter_mut().for_each(|s| *s /= total);
                let output = &mut out[(i * self.heads + head) * dim..][..dim];
                cpu_kernels::weighted_sum(scores, values, output);
            }
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
