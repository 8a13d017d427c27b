//! The `reward_model` reward kind: a trained reward model (`rlvr train-rm`) scores each
//! (prompt, completion), rendered with the chat template as in training. The whole
//! batch is scored in one forward pass per chunk rather than per completion.

use super::{RewardFunction, Sample, Score};
use crate::data::padding::right_pad;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::types::Dtype;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Mutex;
use tch::Device;

pub struct ModelReward {
    model: Mutex<Model>,
    tokenizer: Tokenizer,
    max_length: usize,
}

impl ModelReward {
    pub fn load(dir: &Path, max_length: usize) -> Result<Self> {
        let model = Model::load(dir, Device::Cpu, Dtype::F32)
            .with_context(|| format!("reward model {}", dir.display()))?;
        if model.score.is_none() {
            anyhow::bail!(
                "{}: not a reward model (config.json's architecture is not …ForSequenceClassification; train one with `rlvr train-rm`)",
                dir.display()
            );
        }
        Ok(Self {
            tokenizer: Tokenizer::load(&dir.join("tokenizer.json"))?,
            model: Mutex::new(model),
            max_length,
        })
    }

    fn score_rows(&self, rows: &[Vec<i64>]) -> Result<Vec<f64>> {
        let model = self
            .model
            .lock()
            .map_err(|_| anyhow::anyhow!("reward model lock poisoned"))?;
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(64) {
            let rows: Vec<&[i64]> = chunk.iter().map(Vec::as_slice).collect();
            let (ids, mask) = right_pad(&rows, Device::Cpu);
            let rewards = tch::no_grad(|| model.rewards(&ids, &mask))?;
            out.extend(Vec::<f64>::try_from(rewards.to_kind(tch::Kind::Double))?);
        }
        Ok(out)
    }
}

impl RewardFunction for ModelReward {
    fn score(&self, sample: &Sample) -> Score {
        self.score_all(std::slice::from_ref(sample))
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| Score::infra("the reward model returned nothing"))
    }

    fn score_all(&self, samples: &[Sample]) -> Option<Vec<Score>> {
        let rows: Result<Vec<Vec<i64>>> = samples
            .iter()
            .map(|s| {
                self.tokenizer
                    .render_exchange(s.prompt, s.completion, self.max_length)
            })
            .collect();
        Some(match rows.and_then(|rows| self.score_rows(&rows)) {
            Ok(values) => values
                .into_iter()
                .map(|v| Score::new(v, format!("reward model: {v:.3}")))
                .collect(),
            Err(error) => samples
                .iter()
                .map(|_| Score::infra(format!("{error:#}")))
                .collect(),
        })
    }
}
