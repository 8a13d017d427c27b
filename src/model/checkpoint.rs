//! Hugging Face checkpoint folders: `config.json`, `model.safetensors` or shards named
//! by `model.safetensors.index.json`, `generation_config.json`, `tokenizer.json`.
//!
//! Loading copies each tensor into the variable of the same name, checking shapes, and
//! names the file and tensor for anything missing or misshapen. Saving writes to a
//! temporary folder and renames it into place, so a crash never leaves half a checkpoint.

use super::config::ModelConfig;
use super::init;
use super::transformer::Transformer;
use crate::types::Dtype;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// A model with its variables: what a checkpoint folder loads into.
pub struct Model {
    pub vs: nn::VarStore,
    pub transformer: Transformer,
    /// Reward models' scalar head (`score.weight`, [1, hidden]).
    pub score: Option<Tensor>,
    /// PPO's value head on the policy (`v_head.weight`, [1, hidden]); config.json marks
    /// it with `rlvr_value_head: true` so that checkpoints load it back.
    pub value_head: Option<Tensor>,
    /// PPO's separate critic: a second transformer (`critic.*`) under the value head;
    /// config.json marks it with `rlvr_critic: true`.
    pub critic: Option<Transformer>,
}

const VALUE_HEAD_FLAG: &str = "rlvr_value_head";
const CRITIC_FLAG: &str = "rlvr_critic";
const SCORE: &str = "score";
const SCORE_PREFIX: &str = "score.";
const VALUE_HEAD: &str = "v_head";
const VALUE_HEAD_PREFIX: &str = "v_head.";

impl Model {
    /// A new model whose weights come from `seed` alone (for from-scratch training and
    /// tests): see [`super::init`].
    pub fn random(config: &ModelConfig, device: Device, dtype: Dtype, seed: u64) -> Result<Self> {
        let model = Self::allocate(config, device, dtype)?;
        init::fill(&model.vs, seed, initializer_range(config), |_| true);
        Ok(model)
    }

    /// The model's variables, zero (RMSNorm scales one), for weights that are loaded or
    /// filled next. Draws nothing from any generator.
    fn allocate(config: &ModelConfig, device: Device, dtype: Dtype) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let transformer = Transformer::new(&vs.root(), config)?;
        let score = config
            .is_reward_model()
            .then(|| new_head(&vs, SCORE, config.hidden_size));
        let flag = |name: &str| config.extra.get(name) == Some(&true.into());
        let value_head =
            flag(VALUE_HEAD_FLAG).then(|| new_head(&vs, VALUE_HEAD, config.hidden_size));
        let critic = match flag(CRITIC_FLAG) {
            true => Some(Transformer::new(&(vs.root() / "critic"), config)?),
            false => None,
        };
        vs.set_kind(kind_of(dtype));
        Ok(Self {
            vs,
            transformer,
            score,
            value_head,
            critic,
        })
    }

    /// Gives PPO a separate critic, a copy of the policy's transformer that learns the
    /// values apart from the policy (the value head then reads the critic).
    pub fn add_critic(&mut self) -> Result<()> {
        if self.critic.is_some() {
            return Ok(());
        }
        let kind = self.vs.kind();
        let critic = Transformer::new(&(self.vs.root() / "critic"), self.config())?;
        self.vs.set_kind(kind);
        let variables = self.vs.variables();
        tch::no_grad(|| {
            for (name, variable) in &variables {
                if let Some(source) = name.strip_prefix("critic.")
                    && let Some(policy) = variables.get(source)
                {
                    let mut target = variable.shallow_clone();
                    target.copy_(policy);
                }
            }
        });
        self.critic = Some(critic);
        self.transformer
            .config
            .extra
            .insert(CRITIC_FLAG.into(), true.into());
        Ok(())
    }

    /// Gives the policy a value head (PPO), unless it has one; its weights come from
    /// `seed`.
    pub fn add_value_head(&mut self, seed: u64) {
        if self.value_head.is_none() {
            let kind = self.vs.kind();
            let hidden = self.config().hidden_size;
            self.value_head = Some(new_head(&self.vs, VALUE_HEAD, hidden));
            self.vs.set_kind(kind);
            let std = initializer_range(self.config());
            init::fill(&self.vs, seed, std, |name| {
                name.starts_with(VALUE_HEAD_PREFIX)
            });
            self.transformer
                .config
                .extra
                .insert(VALUE_HEAD_FLAG.into(), true.into());
        }
    }

    /// A reward model initialised from a policy checkpoint: its weights, plus a new
    /// `score` head from `seed` (unless the checkpoint has one).
    pub fn reward_model_from(dir: &Path, device: Device, dtype: Dtype, seed: u64) -> Result<Self> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let config = if config.is_reward_model() {
            config
        } else {
            config.as_reward_model()
        };
        let mut model = Self::allocate(&config, device, dtype)?;
        let std = initializer_range(&config);
        init::fill(&model.vs, seed, std, |name| name.starts_with(SCORE_PREFIX));
        load_weights(
            &mut model.vs,
            dir,
            config.tie_word_embeddings,
            &["score.weight"],
        )?;
        Ok(model)
    }

    /// One scalar reward per row of right-padded `input_ids` [batch, seq], read at
    /// each row's last real token (`key_mask` marks real tokens).
    pub fn rewards(&self, input_ids: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
        let score = self.score.as_ref().context(
            "this model has no reward head (its architecture is not …ForSequenceClassification)",
        )?;
        let positions = super::position_ids_from_mask(key_mask);
        let hidden = self
            .transformer
            .hidden_states(input_ids, &positions, key_mask, None)?;
        let last = (key_mask.sum_dim_intlist(-1, false, Kind::Int64) - 1).clamp_min(0);
        let index = last
            .view([-1, 1, 1])
            .expand([-1, 1, hidden.size()[2]], false);
        let at_last = hidden.gather(1, &index, false).squeeze_dim(1);
        Ok(at_last
            .matmul(&score.tr())
            .squeeze_dim(-1)
            .to_kind(Kind::Float))
    }

    /// Loads a checkpoint folder; weights are converted to `dtype`.
    pub fn load(dir: &Path, device: Device, dtype: Dtype) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: not a model folder", dir.display());
        }
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let mut model = Self::allocate(&config, device, dtype)?;
        load_weights(&mut model.vs, dir, config.tie_word_embeddings, &[])?;
        Ok(model)
    }

    pub fn parameter_count(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.transformer.config
    }

    /// Writes the HF layout to `dir` atomically. `tokenizer` (a tokenizer.json) is
    /// copied in when given.
    pub fn save(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
        let staging = staging_dir(dir)?;
        self.write_files(&staging, tokenizer)?;
        replace_dir(&staging, dir)
    }

    /// Writes the HF files into an existing folder (not atomic: see `save`).
    pub fn write_files(&self, staging: &Path, tokenizer: Option<&Path>) -> Result<()> {
        let named: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let tensors: Vec<(&str, Tensor)> = named
            .iter()
            .map(|(name, t)| {
                (
                    name.as_str(),
                    t.detach().to_device(Device::Cpu).contiguous(),
                )
            })
            .collect();
        Tensor::write_safetensors(&tensors, staging.join("model.safetensors"))
            .context("cannot write model.safetensors")?;

        let mut config = serde_json::to_value(self.config())?;
        let dtype = dtype_name(self.vs.kind());
        // transformers 5 reads `dtype`, older versions `torch_dtype`.
        config["dtype"] = dtype.into();
        config["torch_dtype"] = dtype.into();
        write_json(&staging.join("config.json"), &config)?;
        let mut generation = serde_json::json!({ "do_sample": true });
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(key) {
                generation[key] = v.clone();
            }
        }
        write_json(&staging.join("generation_config.json"), &generation)?;
        if let Some(tokenizer) = tokenizer {
            std::fs::copy(tokenizer, staging.join("tokenizer.json"))
                .with_context(|| format!("cannot copy {}", tokenizer.display()))?;
        }
        Ok(())
    }
}

/// A fresh, empty hidden folder beside `dir` to write a checkpoint into before
/// `replace_dir` moves it into place.
pub fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let staging = sibling(dir, "saving")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    Ok(staging)
}

/// A [1, hidden] linear head `name.weight`, zero until [`init::fill`] or a checkpoint
/// sets it.
fn new_head(vs: &nn::VarStore, name: &str, hidden: usize) -> Tensor {
    (vs.root() / name).var("weight", &[1, hidden as i64], nn::Init::Const(0.0))
}

/// The spread of new weights: the config's `initializer_range`, as transformers reads it.
fn initializer_range(config: &ModelConfig) -> f64 {
    config
        .extra
        .get("initializer_range")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(init::DEFAULT_STD)
}

fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
    }
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `dir` with a suffix, in the same parent folder (so a rename is atomic).
fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{}: a checkpoint needs a folder name", dir.display()))?;
    Ok(dir.with_file_name(format!(".{}.{suffix}", name.to_string_lossy())))
}

/// Moves `staging` to `dir`, replacing what is there; the old copy is removed only
/// after the new one is in place.
pub fn replace_dir(staging: &Path, dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let old = sibling(dir, "old")?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(staging, dir)
        .with_context(|| format!("cannot move the checkpoint into {}", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The safetensors files of a checkpoint: the shards named in the index, or the
/// single `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let weight_map = parsed
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
        let shards: BTreeSet<&str> = weight_map.values().filter_map(|v| v.as_str()).collect();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)",
        dir.display()
    )
}

/// Copies every tensor of the checkpoint into the variable of the same name.
/// Variables named in `optional` may be absent (they keep their initial values).
fn load_weights(vs: &mut nn::VarStore, dir: &Path, tied: bool, optional: &[&str]) -> Result<()> {
    let variables = vs.variables();
    let mut loaded = BTreeSet::new();
    let mut unknown = Vec::new();
    for file in weight_files(dir)? {
        if !file.exists() {
            bail!("{}: shard named in the index is missing", file.display());
        }
        let tensors = Tensor::read_safetensors(&file).with_context(|| {
            format!(
                "{}: cannot read safetensors (truncated or corrupt?)",
                file.display()
            )
        })?;
        for (name, tensor) in tensors {
            let Some(variable) = variables.get(&name) else {
                // Tied checkpoints sometimes carry lm_head anyway; old ones carry
                // rotary buffers. Neither is a variable of ours. Anything else means
                // another architecture (Qwen3's q_norm read as Qwen2 would be dropped).
                let harmless = name == "lm_head.weight" || name.ends_with("rotary_emb.inv_freq");
                if !harmless {
                    unknown.push(name);
                }
                continue;
            };
            if variable.size() != tensor.size() {
                bail!(
                    "{}: tensor `{name}` has shape {:?}, the config needs {:?}",
                    file.display(),
                    tensor.size(),
                    variable.size()
                );
            }
            tch::no_grad(|| {
                let mut variable = variable.shallow_clone();
                variable.copy_(&tensor.to_kind(variable.kind()));
            });
            loaded.insert(name);
        }
    }
    if !unknown.is_empty() {
        unknown.sort_unstable();
        bail!(
            "{}: {} tensor(s) in the checkpoint that this config's architecture does not have (is model_type right?): {}",
            dir.display(),
            unknown.len(),
            unknown
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let missing: Vec<&String> = variables
        .keys()
        .filter(|n| !loaded.contains(*n) && !optional.contains(&n.as_str()))
        .collect();
    if !missing.is_empty() {
        let hint = if tied {
            ""
        } else {
            " (is tie_word_embeddings right?)"
        };
        let mut names: Vec<_> = missing.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        bail!(
            "{}: {} tensor(s) missing from the checkpoint{hint}: {}",
            dir.display(),
            names.len(),
            names.iter().take(8).copied().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
