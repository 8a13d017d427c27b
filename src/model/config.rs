//! `config.json` of a Hugging Face Llama / Qwen2 / Qwen3 / Mistral model.
//!
//! Reads both shapes seen in the wild: transformers 5 nests `rope_theta` (and the rope
//! scaling) under `rope_parameters` and writes `dtype`; older files have a top-level
//! `rope_theta`, `rope_scaling` and `torch_dtype`. Qwen2 files may lack `head_dim`.
//! Unknown keys are kept so that a saved checkpoint round-trips them.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Architectures this crate implements, by `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "qwen2", "qwen3", "mistral"];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ModelConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// transformers 5: `{rope_type, rope_theta, factor, ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// transformers 4: the same scaling keys without the theta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's bias switch for q/k/v/o; Qwen2 always has q/k/v biases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// `eos_token_id` of the folder's generation_config.json (one id or a list):
    /// instruct checkpoints list their end-of-turn tokens there.
    #[serde(skip)]
    pub generation_eos_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
    /// Every other key, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RopeParameters {
    #[serde(default, alias = "type", skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".into()
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid model config", path.display()))?;
        let generation = path.with_file_name("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&generation) {
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", generation.display()))?;
            config.generation_eos_token_id = value.get("eos_token_id").cloned();
        }
        config
            .validate()
            .with_context(|| format!("{}: unsupported model config", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if !SUPPORTED_MODEL_TYPES.contains(&self.model_type.as_str()) {
            bail!(
                "model_type `{}` is not supported (supported: {})",
                self.model_type,
                SUPPORTED_MODEL_TYPES.join(", ")
            );
        }
        if self.hidden_act != "silu" {
            bail!(
                "hidden_act `{}` is not supported (only silu)",
                self.hidden_act
            );
        }
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ] {
            if value == 0 {
                bail!("`{key}` must be positive");
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            bail!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim()
            );
        }
        if self.uses_sliding_window() {
            bail!(
                "sliding-window attention (`use_sliding_window` or a `sliding_attention` layer \
                 in `layer_types`) is not supported: every layer here attends to all positions"
            );
        }
        let rope = self.rope();
        let rope_type = rope.rope_type.as_deref().unwrap_or("default");
        if !matches!(rope_type, "default" | "llama3" | "linear") {
            bail!("rope_type `{rope_type}` is not supported (default, linear, llama3)");
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Rotary settings from whichever of `rope_parameters` / `rope_scaling` is present.
    pub fn rope(&self) -> RopeParameters {
        let mut rope = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or(RopeParameters {
                rope_type: None,
                rope_theta: None,
                factor: None,
                low_freq_factor: None,
                high_freq_factor: None,
                original_max_position_embeddings: None,
                extra: Map::new(),
            });
        rope.rope_theta = rope.rope_theta.or(self.rope_theta).or(Some(10_000.0));
        rope
    }

    /// q/k/v projections carry a bias: always in Qwen2, by `attention_bias` in Llama
    /// and Qwen3.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias.unwrap_or(false)
    }

    /// Qwen3 normalises each query and key head (RMSNorm over `head_dim`) before the
    /// rotary embedding.
    pub fn qk_norm(&self) -> bool {
        self.model_type == "qwen3"
    }

    /// Qwen2/Qwen3 configs can switch some layers to a sliding window, refused here.
    /// Mistral's `sliding_window` is not applied either: it changes nothing below that
    /// many positions (4096 in v0.1; later versions set it to null).
    fn uses_sliding_window(&self) -> bool {
        let switched_on = self.extra.get("use_sliding_window") == Some(&Value::Bool(true));
        let sliding_layer = self
            .extra
            .get("layer_types")
            .and_then(Value::as_array)
            .is_some_and(|types| types.iter().any(|t| t == "sliding_attention"));
        switched_on || sliding_layer
    }

    pub fn o_bias(&self) -> bool {
        self.model_type != "qwen2" && self.attention_bias.unwrap_or(false)
    }

    /// End-of-sequence ids (`eos_token_id` may be one id or a list).
    /// Stop ids: config.json's `eos_token_id` and generation_config.json's, each one id
    /// or a list.
    pub fn eos_token_ids(&self) -> Vec<i64> {
        let mut ids = Vec::new();
        for value in [&self.eos_token_id, &self.generation_eos_token_id] {
            match value {
                Some(Value::Number(n)) => ids.extend(n.as_i64()),
                Some(Value::Array(list)) => ids.extend(list.iter().filter_map(Value::as_i64)),
                _ => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// A reward model: the architecture says `…ForSequenceClassification` (a scalar
    /// `score` head on the last token, as transformers' classes have).
    pub fn is_reward_model(&self) -> bool {
        self.architectures
            .first()
            .is_some_and(|a| a.ends_with("ForSequenceClassification"))
    }

    /// This config as a one-label sequence classifier (a reward model).
    pub fn as_reward_model(&self) -> Self {
        let mut config = self.clone();
        let base = self
            .architectures
            .first()
            .map(|a| a.trim_end_matches("ForCausalLM").to_string())
            .unwrap_or_else(|| "Qwen2".into());
        config.architectures = vec![format!("{base}ForSequenceClassification")];
        config.extra.insert("num_labels".into(), 1.into());
        config
    }

    /// A small Qwen2-shaped config for from-scratch models and tests.
    pub fn tiny_qwen2(vocab_size: usize, hidden_size: usize, layers: usize, heads: usize) -> Self {
        let kv_heads = if heads.is_multiple_of(2) {
            heads / 2
        } else {
            heads
        };
        Self {
            model_type: "qwen2".into(),
            architectures: vec!["Qwen2ForCausalLM".into()],
            vocab_size,
            hidden_size,
            intermediate_size: hidden_size * 3,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: Some(hidden_size / heads),
            rms_norm_eps: 1e-6,
            rope_theta: Some(10_000.0),
            rope_parameters: None,
            rope_scaling: None,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            attention_bias: None,
            mlp_bias: None,
            hidden_act: "silu".into(),
            bos_token_id: None,
            eos_token_id: None,
            generation_eos_token_id: None,
            pad_token_id: None,
            extra: Map::new(),
        }
    }
}
