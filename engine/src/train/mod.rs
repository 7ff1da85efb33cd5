//! LoRA fine-tuning on CPU (or any candle device) with candle's autograd: the base model is frozen (dense, f32),
//! only the adapter's `A`/`B` factors train. The loss covers the completion tokens only; AdamW with a linear warmup
//! then a cosine decay, and global gradient-norm clipping, as Hugging Face's `Trainer` does by default. The result
//! is a PEFT adapter folder that PEFT and this engine both load.

pub mod data;
mod forward;
mod frozen_linear;
mod lora;
mod run;

pub use data::{read_jsonl, Batch, Encoded, Example};
pub use forward::FrozenModel;
pub use lora::{LoraPair, LoraParams, LoraShape};
pub use run::TrainRun;

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Rank, alpha and target modules.
    pub shape: LoraShape,
    /// Peak learning rate.
    pub lr: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Fraction of the steps spent warming the learning rate up linearly from 0.
    pub warmup: f64,
    /// Largest global gradient norm; larger gradients are scaled down to it.
    pub max_grad_norm: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the initial `A` and of the example order.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            shape: LoraShape::default(),
            lr: 2e-4,
            steps: 100,
            batch_size: 8,
            warmup: 0.03,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}

/// The learning rate at `step` (0-based) of `total`: linear warmup over `warmup` steps, then cosine decay to 0.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Mean loss of the batch before the update.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// A training run: the frozen model, the adapter being trained, its optimizer and data.
pub struct Trainer {
    model: FrozenModel,
    lora: LoraParams,
    vars: Vec<Var>,
    opt: AdamW,
    config: TrainConfig,
    train: Vec<Encoded>,
    order: Vec<usize>,
    cursor: usize,
    rng: rand::rngs::StdRng,
    pad: u32,
    step: usize,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("step", &self.step).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Trainer {
    /// Starts a run on `train` (already tokenized); `pad` fills short sequences.
    pub fn new(model: FrozenModel, train: Vec<Encoded>, config: TrainConfig, pad: u32) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::Training(
                "no training examples: every one is empty or longer than the sequence limit (seq_len)".into(),
            ));
        }
        if config.batch_size == 0 || config.steps == 0 {
            return Err(Error::Training("batch size and steps must be at least 1".into()));
        }
        let lora = LoraParams::init(model.config(), config.shape.clone(), model.dtype(), model.device(), config.seed)?;
        let vars = lora.vars();
        let params = ParamsAdamW { lr: config.lr, weight_decay: config.weight_decay, ..Default::default() };
        let opt = AdamW::new(vars.clone(), params)?;
        let rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x5eed);
        Ok(Self { model, lora, vars, opt, config, order: Vec::new(), cursor: 0, train, rng, pad, step: 0 })
    }

    /// The adapter as trained so far.
    pub fn lora(&self) -> &LoraParams {
        &self.lora
    }

    /// The frozen base model.
    pub fn model(&self) -> &FrozenModel {
        &self.model
    }

    /// Steps taken.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    fn next_batch(&mut self) -> Result<Batch> {
        let mut items = Vec::with_capacity(self.config.batch_size);
        while items.len() < self.config.batch_size.min(self.train.len()) {
            if self.cursor == self.order.len() {
                self.order = (0..self.train.len()).collect();
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            items.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        let refs: Vec<&Encoded> = items.iter().map(|&i| &self.train[i]).collect();
        Batch::new(&refs, self.pad, self.model.device())
    }

    /// One optimizer step on the next batch.
    pub fn step(&mut self) -> Result<StepReport> {
        let batch = self.next_batch()?;
        let warmup = (self.config.warmup * self.config.steps as f64).ceil() as usize;
        let lr = learning_rate(self.step, self.config.steps, warmup, self.config.lr);
        self.opt.set_learning_rate(lr);
        let loss = self.model.loss(&batch, &self.lora)?;
        let mut grads = loss.backward()?;
        let grad_norm = clip_grad_norm(&mut grads, &self.vars, self.config.max_grad_norm)?;
        self.opt.step(&grads)?;
        self.step += 1;
        Ok(StepReport { loss: loss.to_dtype(DType::F32)?.to_scalar()?, lr, grad_norm, tokens: batch.tokens })
    }

    /// Mean completion loss over `examples`, in batches of the training batch size.
    pub fn eval_loss(&self, examples: &[Encoded]) -> Result<f32> {
        let (mut sum, mut n) = (0.0f64, 0usize);
        for chunk in examples.chunks(self.config.batch_size.max(1)) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            let batch = Batch::new(&refs, self.pad, self.model.device())?;
            let targets = batch.targets.dim(0)?;
            let loss: f32 = self.model.loss(&batch, &self.lora)?.detach().to_dtype(DType::F32)?.to_scalar()?;
            sum += loss as f64 * targets as f64;
            n += targets;
        }
        Ok(if n == 0 { f32::NAN } else { (sum / n as f64) as f32 })
    }
}

/// Scales every gradient down so that their global L2 norm is at most `max_norm`; returns the norm before.
fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm && norm.is_finite() {
        let factor = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * factor)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let lr = |s| learning_rate(s, 100, 10, 1.0);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(55) - 0.5).abs() < 1e-12);
        assert!(lr(99) < 0.001);
        assert!((1..100).all(|s| lr(s) <= 1.0 && lr(s) >= 0.0));
    }
}
