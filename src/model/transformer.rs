//! Decoder-only transformer of the Llama / Qwen2 / Qwen3 family: RMSNorm, rotary
//! position embeddings, grouped-query attention (Qwen3: each query and key head
//! RMSNorm-ed before the rotation), SwiGLU MLP. Variable names follow the Hugging
//! Face checkpoints (`model.layers.0.self_attn.q_proj.weight`, ...), so safetensors
//! files load by name.

use super::config::ModelConfig;
use super::kv_cache::{KvCache, LayerCache};
use anyhow::{Result, bail};
use tch::{Kind, Tensor, nn, nn::Module};

pub(super) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.ones("weight", &[dim]),
            eps,
        }
    }

    /// Normalises in f32 whatever the weights' dtype, as transformers does.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let mean_square = x.square().mean_dim(-1, true, Kind::Float);
        let normed = x * (mean_square + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// Rotary embeddings: the inverse frequencies, with Llama 3 / linear scaling applied.
pub(super) struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    fn new(config: &ModelConfig, device: tch::Device) -> Self {
        let rope = config.rope();
        let theta = rope.rope_theta.unwrap_or(10_000.0);
        let dim = config.head_dim();
        let mut inv_freq: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / dim as f64))
            .collect();
        let factor = rope.factor.unwrap_or(1.0);
        match rope.rope_type.as_deref() {
            Some("linear") => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some("llama3") => {
                let low = rope.low_freq_factor.unwrap_or(1.0);
                let high = rope.high_freq_factor.unwrap_or(4.0);
                let context = rope.original_max_position_embeddings.unwrap_or(8192) as f64;
                for f in inv_freq.iter_mut() {
                    let wavelength = 2.0 * std::f64::consts::PI / *f;
                    if wavelength > context / low {
                        *f /= factor;
                    } else if wavelength >= context / high {
                        let smooth = (context / wavelength - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            _ => {}
        }
        let inv_freq: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        Self {
            inv_freq: Tensor::from_slice(&inv_freq).to_device(device),
        }
    }

    /// cos and signed sin of shape [batch, 1, seq, head_dim] for the given positions.
    ///
    /// HF rotates with `x * cos + rotate_half(x) * sin`, where `rotate_half(x)` is
    /// `cat(-x2, x1)`. That equals `roll(x, half) * cat(-sin, sin)`, which takes
    /// four kernels instead of seven: sampling pays for every kernel launch.
    pub(super) fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let sin = freqs.sin().unsqueeze(1);
        let signed_sin = Tensor::cat(&[-&sin, sin], -1);
        (angles.cos().to_kind(kind), signed_sin.to_kind(kind))
    }
}

/// `x * cos + rotate_half(x) * sin`, with the sign of `rotate_half` folded into
/// `signed_sin` (see [`Rotary::cos_sin`]).
fn apply_rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    x * cos + x.roll([half], [-1]) * signed_sin
}

/// A linear layer's settings with zero weights and biases: tch's default init would
/// draw from libtorch's global generator, which other threads share (see
/// [`super::init`]).
fn unset_linear(bias: bool) -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    }
}

/// One layer's part of the KV cache, with how many positions it already holds.
struct CacheSlot<'a> {
    layer: &'a mut LayerCache,
    past: i64,
    capacity_hint: i64,
}

pub(super) struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    /// Qwen3's per-head norms over `head_dim`, applied before the rotary embedding.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(vs: nn::Path, config: &ModelConfig) -> Self {
        let hidden = config.hidden_size as i64;
        let heads = config.num_attention_heads as i64;
        let kv_heads = config.kv_heads() as i64;
        let head_dim = config.head_dim() as i64;
        let qkv = unset_linear(config.qkv_bias());
        let o = unset_linear(config.o_bias());
        let head_norm = |name: &str| {
            let eps = config.rms_norm_eps;
            config
                .qk_norm()
                .then(|| RmsNorm::new(&vs / name, head_dim, eps))
        };
        Self {
            q_norm: head_norm("q_norm"),
            k_norm: head_norm("k_norm"),
            q_proj: nn::linear(&vs / "q_proj", hidden, heads * head_dim, qkv),
            k_proj: nn::linear(&vs / "k_proj", hidden, kv_heads * head_dim, qkv),
            v_proj: nn::linear(&vs / "v_proj", hidden, kv_heads * head_dim, qkv),
            o_proj: nn::linear(&vs / "o_proj", heads * head_dim, hidden, o),
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// Rotated queries [batch, heads, seq, head_dim], rotated keys and values
    /// [batch, kv_heads, seq, head_dim].
    fn project(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let split_heads = |t: Tensor, heads: i64, norm: Option<&RmsNorm>| {
            let t = t.reshape([batch, seq, heads, self.head_dim]);
            match norm {
                Some(norm) => norm.forward(&t).transpose(1, 2),
                None => t.transpose(1, 2),
            }
        };
        let q = split_heads(self.q_proj.forward(x), self.heads, self.q_norm.as_ref());
        let k = split_heads(self.k_proj.forward(x), self.kv_heads, self.k_norm.as_ref());
        let v = split_heads(self.v_proj.forward(x), self.kv_heads, None);
        (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin), v)
    }

    /// Without a cache (training), `mask` is boolean [batch, 1, queries, keys], true
    /// where a query may look; with one (sampling), it is the additive bias of
    /// [`attention_bias`] over the same shape.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<CacheSlot>,
    ) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let (q, mut k, mut v) = self.project(x, cos, sin);
        let y = if let Some(CacheSlot {
            layer,
            past,
            capacity_hint,
        }) = cache
        {
            (k, v) = layer.append(past, &k, &v, capacity_hint);
            self.cached_attention(&q, &k, &v, mask)
        } else {
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(mask),
                0.0,
                false,
                None,
                self.kv_heads != self.heads,
            )
        };
        self.o_proj.forward(
            &y.transpose(1, 2)
                .reshape([batch, seq, self.heads * self.head_dim]),
        )
    }

    /// Attention for sampling, in three kernels: `bias + q·kᵀ/√d` (one baddbmm), a
    /// softmax and `·v`. On a CPU, libtorch's fused attention costs several times
    /// more than this for the one-query decode steps. Query heads are grouped under
    /// the key/value head they share, so grouped-query attention never copies the
    /// cache. `q` is [batch, heads, seq, head_dim], `k`/`v` [batch, kv_heads, keys,
    /// head_dim] and `bias` [batch, 1, seq, keys].
    fn cached_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Tensor {
        let (batch, seq, keys) = (q.size()[0], q.size()[2], k.size()[2]);
        let groups = self.heads / self.kv_heads;
        let (blocks, dim) = (batch * self.kv_heads, self.head_dim);
        let q = q.reshape([blocks, groups * seq, dim]);
        let k = k.reshape([blocks, keys, dim]);
        let v = v.reshape([blocks, keys, dim]);
        let bias = bias
            .unsqueeze(1)
            .expand([batch, self.kv_heads, groups, seq, keys], false)
            .reshape([blocks, groups * seq, keys]);
        let scores = bias.baddbmm(&q, &k.transpose(1, 2), 1.0, 1.0 / (dim as f64).sqrt());
        let weights = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        weights.bmm(&v).reshape([batch, self.heads, seq, dim])
    }
}

pub(super) struct Mlp {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl Mlp {
    fn new(vs: nn::Path, config: &ModelConfig) -> Self {
        let (hidden, inner) = (config.hidden_size as i64, config.intermediate_size as i64);
        let bias = unset_linear(config.mlp_bias.unwrap_or(false));
        Self {
            gate_proj: nn::linear(&vs / "gate_proj", hidden, inner, bias),
            up_proj: nn::linear(&vs / "up_proj", hidden, inner, bias),
            down_proj: nn::linear(&vs / "down_proj", inner, hidden, bias),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let gate = self.gate_proj.forward(x).silu();
        self.down_proj.forward(&(gate * self.up_proj.forward(x)))
    }
}

pub(super) struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(vs: nn::Path, config: &ModelConfig) -> Self {
        let (hidden, eps) = (config.hidden_size as i64, config.rms_norm_eps);
        Self {
            input_layernorm: RmsNorm::new(&vs / "input_layernorm", hidden, eps),
            self_attn: Attention::new(&vs / "self_attn", config),
            post_attention_layernorm: RmsNorm::new(&vs / "post_attention_layernorm", hidden, eps),
            mlp: Mlp::new(&vs / "mlp", config),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<CacheSlot>,
    ) -> Tensor {
        let x = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        let y = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        x + y
    }
}

/// The causal language model: embeddings, decoder layers, final norm, LM head.
pub struct Transformer {
    pub config: ModelConfig,
    embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when the head is tied to the input embeddings.
    lm_head: Option<nn::Linear>,
    rotary: Rotary,
}

/// What every layer of one forward pass reads besides the hidden states: the rotary
/// tables and the attention mask.
pub struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

/// What a forward pass outside libtorch (the CPU decoder) reads of the model: each
/// weight by its role, borrowed. Nothing else of the model's insides is visible.
pub(crate) struct WeightsView<'m> {
    pub(crate) embed: &'m Tensor,
    pub(crate) layers: Vec<LayerView<'m>>,
    pub(crate) norm: NormView<'m>,
    /// `None` when the head is tied to the input embeddings.
    pub(crate) lm_head: Option<LinearView<'m>>,
}

pub(crate) struct LayerView<'m> {
    pub(crate) input_norm: NormView<'m>,
    pub(crate) q: LinearView<'m>,
    pub(crate) k: LinearView<'m>,
    pub(crate) v: LinearView<'m>,
    pub(crate) o: LinearView<'m>,
    /// Qwen3's per-head query and key norms.
    pub(crate) q_norm: Option<NormView<'m>>,
    pub(crate) k_norm: Option<NormView<'m>>,
    pub(crate) post_norm: NormView<'m>,
    pub(crate) gate: LinearView<'m>,
    pub(crate) up: LinearView<'m>,
    pub(crate) down: LinearView<'m>,
}

/// A weight [outputs, inputs] and its bias.
pub(crate) struct LinearView<'m> {
    pub(crate) weight: &'m Tensor,
    pub(crate) bias: Option<&'m Tensor>,
}

pub(crate) struct NormView<'m> {
    pub(crate) weight: &'m Tensor,
    pub(crate) eps: f64,
}

fn linear_view(linear: &nn::Linear) -> LinearView<'_> {
    LinearView {
        weight: &linear.ws,
        bias: linear.bs.as_ref(),
    }
}

fn layer_view(l: &DecoderLayer) -> LayerView<'_> {
    LayerView {
        input_norm: norm_view(&l.input_layernorm),
        q: linear_view(&l.self_attn.q_proj),
        k: linear_view(&l.self_attn.k_proj),
        v: linear_view(&l.self_attn.v_proj),
        o: linear_view(&l.self_attn.o_proj),
        q_norm: l.self_attn.q_norm.as_ref().map(norm_view),
        k_norm: l.self_attn.k_norm.as_ref().map(norm_view),
        post_norm: norm_view(&l.post_attention_layernorm),
        gate: linear_view(&l.mlp.gate_proj),
        up: linear_view(&l.mlp.up_proj),
        down: linear_view(&l.mlp.down_proj),
    }
}

fn norm_view(norm: &RmsNorm) -> NormView<'_> {
    NormView {
        weight: &norm.weight,
        eps: norm.eps,
    }
}

impl Transformer {
    /// The weights by role, for the CPU decoder.
    pub(crate) fn weights(&self) -> WeightsView<'_> {
        WeightsView {
            embed: &self.embed_tokens.ws,
            layers: self.layers.iter().map(layer_view).collect(),
            norm: norm_view(&self.norm),
            lm_head: self.lm_head.as_ref().map(linear_view),
        }
    }

    /// Rotary cos and signed sin for `positions` [1, n] (see `Rotary::cos_sin`).
    pub(crate) fn rotary_tables(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        self.rotary.cos_sin(positions, kind)
    }

    /// Creates the variables under `vs`, zero but for the RMSNorm scales: a checkpoint
    /// or [`super::init::fill`] sets them next.
    pub fn new(vs: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let model = vs / "model";
        let (vocab, hidden) = (config.vocab_size as i64, config.hidden_size as i64);
        let embed_config = nn::EmbeddingConfig {
            ws_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(&model / "layers" / i, config))
            .collect();
        let lm_head = (!config.tie_word_embeddings)
            .then(|| nn::linear(vs / "lm_head", hidden, vocab, unset_linear(false)));
        Ok(Self {
            embed_tokens: nn::embedding(&model / "embed_tokens", vocab, hidden, embed_config),
            layers,
            norm: RmsNorm::new(&model / "norm", hidden, config.rms_norm_eps),
            lm_head,
            rotary: Rotary::new(config, vs.device()),
            config: config.clone(),
        })
    }

    /// Final hidden states [batch, seq, hidden] for `input_ids` [batch, seq].
    ///
    /// `key_mask` [batch, past + seq] marks real tokens (1) and padding (0) over the
    /// whole sequence including what the cache already holds; `position_ids`
    /// [batch, seq] are the positions of the new tokens.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        key_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        let (batch, seq) = input_ids.size2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if key_mask.size() != [batch, past + seq] {
            bail!(
                "attention mask has shape {:?}, expected [{batch}, {}] (cached {past} + new {seq})",
                key_mask.size(),
                past + seq
            );
        }
        let mut x = self.embed_tokens.forward(input_ids);
        let (cos, sin) = self.rotary.cos_sin(position_ids, x.kind());
        let mut mask = attention_mask(key_mask, seq, past);
        if cache.is_some() {
            mask = attention_bias(&mask, x.kind());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| CacheSlot {
                past,
                capacity_hint: c.capacity_hint(),
                layer: c.layer_mut(i),
            });
            x = layer.forward(&x, &cos, &sin, &mask, slot);
        }
        if let Some(cache) = cache {
            cache.advance(seq);
        }
        Ok(self.norm.forward(&x))
    }

    /// The first stage of a forward pass taken one layer at a time (no cache): the
    /// embeddings of `input_ids`, and what every layer shares. Arguments as
    /// [`Transformer::hidden_states`]; `embed`, then [`Transformer::layer`] for each
    /// layer, then [`Transformer::final_norm`] equals `hidden_states`.
    pub fn embed(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        key_mask: &Tensor,
    ) -> Result<(Tensor, LayerInputs)> {
        self.check_ids(input_ids)?;
        let (batch, seq) = input_ids.size2()?;
        if key_mask.size() != [batch, seq] {
            bail!(
                "attention mask has shape {:?}, expected [{batch}, {seq}]",
                key_mask.size()
            );
        }
        let x = self.embed_tokens.forward(input_ids);
        let (cos, sin) = self.rotary.cos_sin(position_ids, x.kind());
        let mask = attention_mask(key_mask, seq, 0);
        Ok((x, LayerInputs { cos, sin, mask }))
    }

    /// Decoder layer `index` over hidden states `x`.
    pub fn layer(&self, index: usize, x: &Tensor, inputs: &LayerInputs) -> Tensor {
        let LayerInputs { cos, sin, mask } = inputs;
        self.layers[index].forward(x, cos, sin, mask, None)
    }

    pub fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Vocabulary logits for hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(&self.embed_tokens.ws.tr()),
        }
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        key_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        Ok(self.logits(&self.hidden_states(input_ids, position_ids, key_mask, cache)?))
    }

    pub fn device(&self) -> tch::Device {
        self.rotary.inv_freq.device()
    }

    /// A fresh, empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Token ids outside the vocabulary would abort inside libtorch; refuse them here.
    fn check_ids(&self, input_ids: &Tensor) -> Result<()> {
        if input_ids.numel() == 0 {
            bail!("empty input: no token ids");
        }
        let (min, max) = (
            input_ids.min().int64_value(&[]),
            input_ids.max().int64_value(&[]),
        );
        let vocab = self.config.vocab_size as i64;
        if min < 0 || max >= vocab {
            let bad = if min < 0 { min } else { max };
            bail!("token id {bad} is outside the vocabulary (0..{vocab})");
        }
        Ok(())
    }
}

/// Positions from a left-padded mask: 0 for the first real token of each row; padding
/// gets position 0 (its output is never used).
pub fn position_ids_from_mask(key_mask: &Tensor) -> Tensor {
    (key_mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

/// Boolean [batch, 1, queries, keys]: causal, padding keys hidden, and every query
/// sees itself so that rows of padding never divide by zero in the softmax.
fn attention_mask(key_mask: &Tensor, queries: i64, past: i64) -> Tensor {
    let device = key_mask.device();
    let keys = past + queries;
    let query_pos = Tensor::arange_start(past, keys, (Kind::Int64, device)).unsqueeze(1);
    let key_pos = Tensor::arange(keys, (Kind::Int64, device)).unsqueeze(0);
    let causal = key_pos.le_tensor(&query_pos);
    let diagonal = key_pos.eq_tensor(&query_pos);
    let real_keys = key_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
    causal.logical_and(&real_keys).logical_or(&diagonal)
}

/// The boolean mask as an additive bias: 0 where a query may look, -inf elsewhere.
fn attention_bias(mask: &Tensor, kind: Kind) -> Tensor {
    Tensor::where_scalar(mask, 0.0, f64::NEG_INFINITY).to_kind(kind)
}
