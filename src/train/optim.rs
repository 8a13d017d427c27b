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
    /// Holds the same parameters only to drop their gradients: libtorch's optimizer
    /// can set a gradient to none, which tch's `Tensor` API cannot.
    releaser: tch::COptimizer,
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
            .collect::<Vec<_>>();
        Self {
            releaser: gradient_releaser(&slots),
            slots,
            steps: 0,
            config: config.clone(),
        }
    }

    /// Drops the gradients, as torch's `zero_grad(set_to_none=True)`: the next
    /// backward allocates each one as it reaches its layer, while the activations of
    /// the layers above are being freed, so gradients and activations do not peak
    /// together (at 0.5B that is 2.5 GB less at the peak).
    pub fn zero_grad(&mut self) {
        self.releaser
            .zero_grad()
            .expect("libtorch could not drop the gradients");
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
        self.step_in_slices(lr, UPDATE_SLICE);
    }

    fn step_in_slices(&mut self, lr: f64, slice_size: i64) {
        self.steps += 1;
        let (beta1, beta2) = (self.config.adam_beta1, self.config.adam_beta2);
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        let weight_decay = self.config.weight_decay;
        let bias = Bias {
            beta1,
            beta2,
            bias1,
            bias2,
            eps: self.config.adam_epsilon,
        };
        tch::no_grad(|| {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(Kind::Float);
                let weights = slot.master.as_ref().unwrap_or(&slot.param).shallow_clone();
                let decay = if slot.decay { weight_decay } else { 0.0 };
                // In slices, so the temporaries stay small next to a 545 MB embedding;
                // every element gets the same operations, so the result is the same.
                let flat = |t: &Tensor| t.view([-1]);
                let (w, m, v, g) = (
                    flat(&weights),
                    flat(&slot.exp_avg),
                    flat(&slot.exp_avg_sq),
                    flat(&grad),
                );
                let size = g.size()[0];
                for start in (0..size).step_by(slice_size as usize) {
                    let n = slice_size.min(size - start);
                    let slice = |t: &Tensor| t.narrow(0, start, n);
                    let moments = (slice(&m), slice(&v));
                    adamw_update(&mut slice(&w), moments, &slice(&g), lr, decay, &bias);
                }
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

/// Elements per slice of the AdamW update (64 MB of f32).
const UPDATE_SLICE: i64 = 1 << 24;

/// AdamW's betas, their bias corrections at this step, and epsilon.
struct Bias {
    beta1: f64,
    beta2: f64,
    bias1: f64,
    bias2: f64,
    eps: f64,
}

/// torch.optim.AdamW on one slice: decoupled decay, the moments, the bias-corrected step.
fn adamw_update(
    weights: &mut Tensor,
    (mut exp_avg, mut exp_avg_sq): (Tensor, Tensor),
    grad: &Tensor,
    lr: f64,
    weight_decay: f64,
    b: &Bias,
) {
    if weight_decay > 0.0 {
        let _ = weights.g_mul_scalar_(1.0 - lr * weight_decay);
    }
    let _ = exp_avg.lerp_(grad, 1.0 - b.beta1);
    let _ = exp_avg_sq.g_mul_scalar_(b.beta2);
    let _ = exp_avg_sq.addcmul_(&(grad * (1.0 - b.beta2)), grad);
    let denominator = exp_avg_sq.sqrt() / b.bias2.sqrt() + b.eps;
    let update = (&exp_avg / &denominator) * (-lr / b.bias1);
    let _ = weights.g_add_(&update);
}

/// An optimizer over the slots' parameters that is never stepped (see `releaser`).
fn gradient_releaser(slots: &[Slot]) -> tch::COptimizer {
    let mut releaser =
        tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false).expect("libtorch could not build SGD");
    for slot in slots {
        releaser
            .add_parameters(&slot.param, 0)
            .expect("libtorch could not hold a parameter");
    }
    releaser
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

    /// Gradients are dropped, not zeroed, and the next backward starts from none.
    #[test]
    fn zero_grad_drops_the_gradients() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[3.0f32, 4.0]));
        let mut optimizer = AdamW::new(&vs, &config());
        (&w * &w).sum(Kind::Float).backward();
        optimizer.zero_grad();
        assert!(!w.grad().defined());
        (&w * &w).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&w.grad()).unwrap(), [6.0, 8.0]);
    }

    /// The update taken in slices (of a size that cuts SIMD widths and libtorch's
    /// parallel chunks) is bit for bit the update over each whole tensor.
    #[test]
    fn the_update_in_slices_equals_the_whole_update() {
        let run = |slice: i64| {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let root = vs.root();
            tch::manual_seed(11);
            let a = root.var_copy("a_weight", &Tensor::randn([317, 211], tch::kind::FLOAT_CPU));
            let b = root.var_copy("b_norm", &Tensor::randn([1001], tch::kind::FLOAT_CPU));
            let mut optimizer = AdamW::new(&vs, &config());
            for _ in 0..3 {
                optimizer.zero_grad();
                let loss = a.pow_tensor_scalar(3).sum(Kind::Float) + (&b * &b).sum(Kind::Float);
                loss.backward();
                optimizer.step_in_slices(1e-2, slice);
            }
            (a.copy(), b.copy())
        };
        let (whole, sliced) = (run(i64::MAX), run(997));
        assert!(whole.0.equal(&sliced.0) && whole.1.equal(&sliced.1));
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
