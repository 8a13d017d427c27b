//! AdamW, the learning-rate schedule and gradient clipping.
//!
//! AdamW is written out here rather than taken from `tch::nn::Optimizer` because a run
//! must save and restore the moment estimates exactly to resume bit for bit, and tch
//! does not expose them. The update is torch.optim.AdamW's (decoupled weight decay,
//! bias-corrected moments); like the HF Trainer, biases and norm weights are not decayed.
//!
//! Weights stored in bf16 or f16 get an f32 master copy: the update is applied to the
//! master and the model gets it rounded. Without one, a step at lr 1e-6 is below bf16's
//! resolution (8 bits of mantissa) for most weights and training silently does nothing.

use crate::config::run::{LrScheduler, OptimSection};
use anyhow::{Context, Result, bail};
use std::path::Path;
use tch::{Kind, Tensor, nn};

struct Slot {
    name: String,
    param: Tensor,
    /// The f32 weights the update applies to, when `param` is stored in lower precision.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

pub struct AdamW {
    slots: Vec<Slot>,
    /// Updates applied so far (the `t` of the bias correction).
    pub steps: i64,
    config: OptimSection,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, config: &OptimSection) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = variables
            .into_iter()
            .map(|(name, param)| Slot {
                decay: !(name.ends_with("bias") || name.contains("norm")),
                master: master_copy(&param),
                exp_avg: param.zeros_like().to_kind(Kind::Float),
                exp_avg_sq: param.zeros_like().to_kind(Kind::Float),
                name,
                param,
            })
            .collect();
        Self {
            slots,
            steps: 0,
            config: config.clone(),
        }
    }

    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }

    /// The L2 norm of all gradients together (before clipping).
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let squares: Vec<Tensor> = self
                .slots
                .iter()
                .filter(|s| s.param.grad().defined())
                .map(|s| {
                    s.param
                        .grad()
                        .to_kind(Kind::Float)
                        .square()
                        .sum(Kind::Float)
                })
                .collect();
            if squares.is_empty() {
                return 0.0;
            }
            Tensor::stack(&squares, 0)
                .sum(Kind::Float)
                .sqrt()
                .double_value(&[])
        })
    }

    /// Scales gradients down so that their norm is at most `max_norm` (torch's
    /// clip_grad_norm_); returns the norm before clipping. `max_norm` 0 only measures.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm.is_finite() {
            let coefficient = (max_norm / (norm + 1e-6)).min(1.0);
            if coefficient < 1.0 {
                tch::no_grad(|| {
                    for slot in &self.slots {
                        let mut grad = slot.param.grad();
                        if grad.defined() {
                            let _ = grad.g_mul_scalar_(coefficient);
                        }
                    }
                });
            }
        }
        norm
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let (beta1, beta2) = (self.config.adam_beta1, self.config.adam_beta2);
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        let weight_decay = self.config.weight_decay;
        let eps = self.config.adam_epsilon;
        tch::no_grad(|| {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(Kind::Float);
                let mut weights = slot.master.as_ref().unwrap_or(&slot.param).shallow_clone();
                if slot.decay && weight_decay > 0.0 {
                    let _ = weights.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = slot.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = slot.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = slot.exp_avg_sq.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                let denominator = slot.exp_avg_sq.sqrt() / bias2.sqrt() + eps;
                let update = (&slot.exp_avg / &denominator) * (-lr / bias1);
                let _ = weights.g_add_(&update);
                if slot.master.is_some() {
                    slot.param.copy_(&weights);
                }
            }
        });
    }

    /// The weights each update applies to (the f32 master where there is one).
    #[cfg(test)]
    fn updated_weights(&self) -> Vec<Tensor> {
        let weights = |s: &Slot| {
            s.master
                .as_ref()
                .unwrap_or(&s.param)
                .to_kind(Kind::Float)
                .copy()
        };
        self.slots.iter().map(weights).collect()
    }

    /// Moments and the step count, for a checkpoint.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for slot in &self.slots {
            tensors.push((
                format!("exp_avg.{}", slot.name),
                slot.exp_avg.shallow_clone(),
            ));
            tensors.push((
                format!("exp_avg_sq.{}", slot.name),
                slot.exp_avg_sq.shallow_clone(),
            ));
            if let Some(master) = &slot.master {
                tensors.push((format!("master.{}", slot.name), master.shallow_clone()));
            }
        }
        tensors.push(("steps".into(), Tensor::from_slice(&[self.steps])));
        let named: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
            .collect();
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("{}: cannot read optimizer state", path.display()))?
            .into_iter()
            .collect();
        let get = |name: &str, like: &Tensor| -> Result<Tensor> {
            let t = tensors
                .get(name)
                .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
            if t.size() != like.size() {
                bail!(
                    "{}: `{name}` has shape {:?}, the model needs {:?}",
                    path.display(),
                    t.size(),
                    like.size()
                );
            }
            Ok(t.to_device(like.device()))
        };
        for slot in &mut self.slots {
            slot.exp_avg = get(&format!("exp_avg.{}", slot.name), &slot.exp_avg)?;
            slot.exp_avg_sq = get(&format!("exp_avg_sq.{}", slot.name), &slot.exp_avg_sq)?;
            if let Some(master) = &mut slot.master {
                // A checkpoint from before master weights resumes from the stored weights.
                let name = format!("master.{}", slot.name);
                if tensors.contains_key(&name) {
                    *master = get(&name, master)?.to_kind(Kind::Float);
                    tch::no_grad(|| slot.param.copy_(master));
                }
            }
        }
        self.steps = tensors
            .get("steps")
            .with_context(|| format!("{}: no `steps`", path.display()))?
            .int64_value(&[0]);
        Ok(())
    }
}

/// An f32 copy of weights stored in lower precision, detached from autograd.
fn master_copy(param: &Tensor) -> Option<Tensor> {
    (param.kind() != Kind::Float && param.kind() != Kind::Double)
        .then(|| param.detach().to_kind(Kind::Float))
}

/// The learning rate at optimizer step `step` (0-based) of `total`: linear warmup
/// from 0, then constant, linear decay to 0 or cosine decay to 0 (as the HF schedules).
pub fn learning_rate(config: &OptimSection, step: usize, total: usize) -> f64 {
    let peak = config.learning_rate;
    let warmup = config.warmup_steps;
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match config.lr_scheduler {
        LrScheduler::Constant => peak,
        LrScheduler::Linear => peak * (1.0 - progress).max(0.0),
        LrScheduler::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OptimSection {
        OptimSection {
            learning_rate: 1e-2,
            weight_decay: 0.1,
            ..OptimSection::default()
        }
    }

    /// Two steps on one parameter, against torch.optim.AdamW worked by hand.
    #[test]
    fn adamw_matches_the_torch_update() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut optimizer = AdamW::new(&vs, &config());
        let (lr, wd, b1, b2, eps) = (1e-2, 0.1, 0.9, 0.999, 1e-8);
        let mut p = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            optimizer.zero_grad();
            // loss = sum(w^3) so the gradient 3w^2 changes between steps.
            w.pow_tensor_scalar(3).sum(Kind::Float).backward();
            optimizer.step(lr);
            for i in 0..2 {
                let g = 3.0 * p[i] * p[i];
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let m_hat = m[i] / (1.0 - f64::powi(b1, t));
                let v_hat = v[i] / (1.0 - f64::powi(b2, t));
                p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        let got: Vec<f32> = Vec::try_from(&w).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
    }

    /// Three steps of next-token loss on a tiny model from the same bf16-representable
    /// start; returns how far each weight moved (through the optimizer's own view).
    fn moved_weights(model: &crate::model::Model, master: bool) -> Tensor {
        use crate::train::token_loss::next_token_loss;
        let mut config = config();
        config.learning_rate = 1e-6;
        config.weight_decay = 0.0;
        let mut optimizer = AdamW::new(&model.vs, &config);
        if !master {
            optimizer.slots.iter_mut().for_each(|s| s.master = None);
        }
        let start = optimizer.updated_weights();
        let sequences: Vec<Vec<i64>> = (0..4)
            .map(|row| (0..12).map(|t| (row * 7 + t * 3) % 50).collect())
            .collect();
        let masks: Vec<Vec<u8>> = sequences.iter().map(|s| vec![1; s.len()]).collect();
        for _ in 0..3 {
            optimizer.zero_grad();
            let loss = next_token_loss(&model.transformer, &sequences, &masks, false).unwrap();
            (loss.sum / loss.tokens).backward();
            optimizer.step(1e-6);
        }
        let moved: Vec<Tensor> = optimizer
            .updated_weights()
            .iter()
            .zip(&start)
            .map(|(end, start)| (end - start).flatten(0, -1))
            .collect();
        Tensor::cat(&moved, 0)
    }

    /// The check: at lr 1e-6, bf16 weights with an f32 master move as f32
    /// weights do (within what bf16 compute changes in the gradients), while bf16
    /// weights updated in place barely move at all.
    #[test]
    fn bf16_training_with_f32_master_weights_follows_the_f32_updates() {
        use crate::model::{Model, ModelConfig};
        use crate::types::Dtype;
        let shape = ModelConfig::tiny_qwen2(64, 32, 2, 4);
        let bf16 = Model::random(&shape, tch::Device::Cpu, Dtype::Bf16, 3).unwrap();
        let mut f32 = Model::random(&shape, tch::Device::Cpu, Dtype::F32, 3).unwrap();
        f32.vs.copy(&bf16.vs).unwrap();
        let reference = moved_weights(&f32, true);
        let error = |moved: &Tensor| {
            (moved - &reference).norm().double_value(&[]) / reference.norm().double_value(&[])
        };
        let with_master = error(&moved_weights(&bf16, true));
        let bf16 = Model::random(&shape, tch::Device::Cpu, Dtype::Bf16, 3).unwrap();
        let in_place = error(&moved_weights(&bf16, false));
        eprintln!("relative error of the update: master {with_master:.4}, in place {in_place:.4}");
        assert!(with_master < 0.15, "{with_master}");
        assert!(in_place > 0.5, "{in_place}");
    }

    /// A bf16 run saved and loaded mid-way takes the same next step as one that never
    /// stopped: the master weights travel in the optimizer state.
    #[test]
    fn bf16_master_weights_resume_exactly() {
        use crate::model::{Model, ModelConfig};
        use crate::train::token_loss::next_token_loss;
        use crate::types::Dtype;
        let shape = ModelConfig::tiny_qwen2(64, 32, 1, 4);
        let sequences = vec![(0..10).collect::<Vec<i64>>()];
        let masks = vec![vec![1u8; 10]];
        let step = |model: &Model, optimizer: &mut AdamW| {
            optimizer.zero_grad();
            let loss = next_token_loss(&model.transformer, &sequences, &masks, false).unwrap();
            loss.sum.backward();
            optimizer.step(1e-4);
        };
        let model = Model::random(&shape, tch::Device::Cpu, Dtype::Bf16, 5).unwrap();
        let mut optimizer = AdamW::new(&model.vs, &config());
        step(&model, &mut optimizer);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), None).unwrap();
        optimizer
            .save(&dir.path().join("optimizer.safetensors"))
            .unwrap();
        step(&model, &mut optimizer);

        let resumed = Model::load(dir.path(), tch::Device::Cpu, Dtype::Bf16).unwrap();
        let mut again = AdamW::new(&resumed.vs, &config());
        again
            .load(&dir.path().join("optimizer.safetensors"))
            .unwrap();
        step(&resumed, &mut again);
        for (a, b) in optimizer
            .updated_weights()
            .iter()
            .zip(again.updated_weights())
        {
            assert!(a.equal(&b), "master weights differ after resume");
        }
        for (a, b) in optimizer.slots.iter().zip(&again.slots) {
            assert!(a.param.equal(&b.param), "{} differs after resume", a.name);
        }
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_max_norm() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[3.0f32, 4.0]));
        let mut optimizer = AdamW::new(&vs, &config());
        (&w * &w).sum(Kind::Float).backward(); // gradient (6, 8), norm 10
        let norm = optimizer.clip_grad_norm(1.0);
        assert!((norm - 10.0).abs() < 1e-5);
        assert!((optimizer.grad_norm() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn schedules_warm_up_then_decay_to_zero() {
        let mut c = config();
        c.warmup_steps = 10;
        assert_eq!(learning_rate(&c, 0, 110), 0.0);
        assert!((learning_rate(&c, 5, 110) - 5e-3).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 110) - 1e-2).abs() < 1e-12);
        assert!((learning_rate(&c, 60, 110) - 5e-3).abs() < 1e-12);
        assert!(learning_rate(&c, 110, 110).abs() < 1e-12);
        c.lr_scheduler = LrScheduler::Linear;
        assert!((learning_rate(&c, 35, 110) - 7.5e-3).abs() < 1e-12);
        c.lr_scheduler = LrScheduler::Constant;
        assert_eq!(learning_rate(&c, 100, 110), 1e-2);
    }
}
