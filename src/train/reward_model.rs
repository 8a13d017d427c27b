//! Reward-model training (`rlvr train-rm`): a scalar head on the transformer, trained on
//! preference pairs (prompt, chosen, rejected) with the Bradley–Terry loss
//! −log σ(r_chosen − r_rejected − margin), plus TRL's optional centring term
//! coefficient · mean((r_chosen + r_rejected)²). The last `eval_fraction` of the pairs
//! are held out; their pair accuracy is logged as `eval_accuracy`.

use super::Objective;
use super::batch::{DataOrder, right_pad};
use crate::config::RunConfig;
use crate::config::run::RewardModelSection;
use crate::data::prompts::filter_records;
use crate::model::Model;
use crate::run::{Metrics, RunDir};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A preference pair rendered with the chat template.
pub struct Pair {
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
    pub margin: f64,
}

/// The Bradley–Terry loss (mean over pairs) with the optional centring term.
pub fn bradley_terry_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: &Tensor,
    center: f64,
) -> Tensor {
    let kind = chosen.kind();
    let loss = -(chosen - rejected - margin).log_sigmoid().mean(kind);
    if center > 0.0 {
        loss + (chosen + rejected).square().mean(kind) * center
    } else {
        loss
    }
}

pub fn load_pairs(
    config: &RunConfig,
    tokenizer: &Tokenizer,
    section: &RewardModelSection,
) -> Result<Vec<Pair>> {
    let data = config
        .data
        .as_ref()
        .context("train-rm needs a `data` section (data.path: jsonl of prompt/chosen/rejected)")?;
    let records = crate::data::read_records(&data.path)?;
    filter_records(&records, &data.path, config.train.on_bad_record, |record| {
        let text = |field: &str| -> Result<&str> {
            record
                .get(field)
                .and_then(Value::as_str)
                .with_context(|| format!("no string field `{field}`"))
        };
        let margin = match &section.margin_field {
            Some(field) => record
                .get(field)
                .and_then(Value::as_f64)
                .with_context(|| format!("no number field `{field}` (rm.margin_field)"))?,
            None => 0.0,
        };
        Ok(Pair {
            chosen: tokenizer.render_exchange(text("prompt")?, text("chosen")?, data.max_length)?,
            rejected: tokenizer.render_exchange(
                text("prompt")?,
                text("rejected")?,
                data.max_length,
            )?,
            margin,
        })
    })
}

/// Rewards of the chosen and the rejected side of `pairs`.
pub fn score_pairs(model: &Model, pairs: &[&Pair]) -> Result<(Tensor, Tensor)> {
    let device = model.vs.device();
    let rows: Vec<&[i64]> = pairs
        .iter()
        .map(|p| p.chosen.as_slice())
        .chain(pairs.iter().map(|p| p.rejected.as_slice()))
        .collect();
    let (ids, mask) = right_pad(&rows, device);
    let rewards = model.rewards(&ids, &mask)?;
    let n = pairs.len() as i64;
    Ok((rewards.narrow(0, 0, n), rewards.narrow(0, n, n)))
}

/// Share of pairs whose chosen response scores higher.
pub fn pair_accuracy(model: &Model, pairs: &[Pair]) -> Result<f64> {
    let mut right = 0.0;
    for chunk in pairs.chunks(64) {
        let refs: Vec<&Pair> = chunk.iter().collect();
        let (chosen, rejected) = tch::no_grad(|| score_pairs(model, &refs))?;
        right += chosen
            .gt_tensor(&rejected)
            .sum(Kind::Double)
            .double_value(&[]);
    }
    Ok(right / pairs.len().max(1) as f64)
}

pub struct RewardModelObjective {
    train: Vec<Pair>,
    held_out: Vec<Pair>,
    order: DataOrder,
    batch_size: usize,
    accumulation: usize,
    section: RewardModelSection,
    last_step: usize,
}

impl Objective for RewardModelObjective {
    fn accumulate(&mut self, model: &Model, step: usize, _run: &RunDir) -> Result<Metrics> {
        let per_step = self.batch_size * self.accumulation;
        let picks: Vec<usize> = (0..per_step)
            .map(|i| self.order.get(step * per_step + i))
            .collect();
        let (mut loss_sum, mut right, mut chosen_sum, mut rejected_sum) = (0.0, 0.0, 0.0, 0.0);
        for micro in picks.chunks(self.batch_size) {
            let pairs: Vec<&Pair> = micro.iter().map(|&i| &self.train[i]).collect();
            let (chosen, rejected) = score_pairs(model, &pairs)?;
            let margins: Vec<f32> = pairs.iter().map(|p| p.margin as f32).collect();
            let margin = Tensor::from_slice(&margins).to_device(chosen.device());
            let loss = bradley_terry_loss(
                &chosen,
                &rejected,
                &margin,
                self.section.center_rewards_coefficient,
            ) / self.accumulation as f64;
            loss.backward();
            loss_sum += loss.double_value(&[]);
            right += chosen
                .gt_tensor(&rejected)
                .sum(Kind::Double)
                .double_value(&[]);
            chosen_sum += chosen.sum(Kind::Double).double_value(&[]);
            rejected_sum += rejected.sum(Kind::Double).double_value(&[]);
        }
        let n = picks.len() as f64;
        let mut metrics = Metrics::from([
            ("loss".into(), loss_sum),
            ("accuracy".into(), right / n),
            ("rewards/chosen".into(), chosen_sum / n),
            ("rewards/rejected".into(), rejected_sum / n),
            ("rewards/margin".into(), (chosen_sum - rejected_sum) / n),
        ]);
        let done = step + 1;
        if !self.held_out.is_empty()
            && (done.is_multiple_of(self.section.eval_steps) || done == self.last_step)
        {
            metrics.insert(
                "eval_accuracy".into(),
                pair_accuracy(model, &self.held_out)?,
            );
        }
        Ok(metrics)
    }
}

pub fn run(config: &RunConfig, options: super::StartOptions) -> Result<PathBuf> {
    let section = config.rm.clone().unwrap_or_default();
    let device = super::tch_device(config.device)?;
    let path = config
        .model
        .path
        .clone()
        .context("train-rm starts from a model folder (model.path)")?;
    // The new score head comes from the run's seed, so that a run repeats exactly.
    let model = Model::reward_model_from(&path, device, config.model.dtype, config.seed)?;
    let tokenizer_path = config
        .model
        .tokenizer
        .clone()
        .unwrap_or(path.join("tokenizer.json"));
    let tokenizer = super::run_tokenizer(config, &tokenizer_path)?;
    let mut pairs = load_pairs(config, &tokenizer, &section)?;
    let held = (pairs.len() as f64 * section.eval_fraction).round() as usize;
    if pairs.len() <= held {
        bail!("{} preference pairs leave none to train on", pairs.len());
    }
    let held_out = pairs.split_off(pairs.len() - held);
    let mut objective = RewardModelObjective {
        order: DataOrder::new(pairs.len(), config.seed),
        train: pairs,
        held_out,
        batch_size: config.train.batch_size,
        accumulation: config.train.gradient_accumulation_steps,
        section,
        last_step: config.train.max_steps,
    };
    super::train(
        config,
        "reward-model",
        model,
        Path::new(&tokenizer_path),
        &mut objective,
        options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bradley_terry_loss_and_gradient_match_the_formula() {
        let chosen = Tensor::from_slice(&[1.0f64, -0.5, 0.3]).set_requires_grad(true);
        let rejected = Tensor::from_slice(&[0.2f64, 0.4, 0.3]).set_requires_grad(true);
        let margin = Tensor::from_slice(&[0.0f64, 0.1, 0.5]);
        let center = 0.01;
        let loss = bradley_terry_loss(&chosen, &rejected, &margin, center);
        loss.backward();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (c, r, m) = ([1.0, -0.5, 0.3], [0.2, 0.4, 0.3], [0.0, 0.1, 0.5]);
        let mut expected = 0.0;
        for i in 0..3 {
            let d: f64 = c[i] - r[i] - m[i];
            expected += -sigmoid(d).ln() / 3.0 + center * (c[i] + r[i]).powi(2) / 3.0;
            // d/dc = −(1 − σ(d))/n + 2·center·(c + r)/n; d/dr = (1 − σ(d))/n + 2·center·(c + r)/n.
            let common = 2.0 * center * (c[i] + r[i]) / 3.0;
            let dc = -(1.0 - sigmoid(d)) / 3.0 + common;
            let dr = (1.0 - sigmoid(d)) / 3.0 + common;
            assert!((chosen.grad().double_value(&[i as i64]) - dc).abs() < 1e-9);
            assert!((rejected.grad().double_value(&[i as i64]) - dr).abs() < 1e-9);
        }
        assert!((loss.double_value(&[]) - expected).abs() < 1e-9);
    }
}
