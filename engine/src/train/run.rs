//! A whole training run from a model file and examples: the tokenizer and the frozen base model loaded from the
//! model's path, the examples encoded, the [`Trainer`] made, and the result saved as a PEFT folder. What the
//! command line (`loraland train`) and the web app's training jobs share.

use super::{Encoded, Example, FrozenModel, TrainConfig, Trainer};
use crate::config::{ModelConfig, RopeStyle};
use crate::model::{LoadOptions, Model, QuantMode};
use crate::{Error, Result, Tokenizer};
use candle_core::DType;
use std::path::Path;

/// A run ready to step: the trainer, its held-out set, and what saving needs.
#[derive(Debug)]
pub struct TrainRun {
    /// The trainer.
    pub trainer: Trainer,
    /// The held-out examples, encoded.
    pub held_out: Vec<Encoded>,
    /// Training examples left out: empty, or longer than the sequence limit.
    pub skipped_train: usize,
    /// Held-out examples left out the same way.
    pub skipped_held_out: usize,
    /// The tokenizer of the model.
    pub tokenizer: Tokenizer,
    config: ModelConfig,
    rope: RopeStyle,
    base_name: String,
}

impl TrainRun {
    /// Loads the model at `model` (dequantized to f32, frozen) and its tokenizer, encodes `train` and `held_out`
    /// (examples over `seq_len` tokens are skipped and counted) and makes the trainer.
    pub fn prepare(
        model: &Path,
        train: &[Example],
        held_out: &[Example],
        seq_len: usize,
        config: TrainConfig,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::for_model(model)?;
        let (train_set, skipped_train) = super::data::encode(train, &tokenizer, seq_len)?;
        if train_set.is_empty() {
            return Err(Error::NoExampleFits { examples: train.len(), seq_len });
        }
        let (held_set, skipped_held_out) = super::data::encode(held_out, &tokenizer, seq_len)?;
        let loaded = Model::load(model, &LoadOptions { quant: QuantMode::Dequantize, ..Default::default() })?;
        let frozen = FrozenModel::new(&loaded, DType::F32)?;
        let rope = frozen.rope_style();
        let model_config = loaded.config().clone();
        drop(loaded);
        let pad = tokenizer.eos_token_id().unwrap_or(0);
        let trainer = Trainer::new(frozen, train_set, config, pad)?;
        let base_name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self {
            trainer,
            held_out: held_set,
            skipped_train,
            skipped_held_out,
            tokenizer,
            config: model_config,
            rope,
            base_name,
        })
    }

    /// Mean completion loss over the held-out set (NaN when it is empty).
    pub fn held_out_loss(&self) -> Result<f32> {
        self.trainer.eval_loss(&self.held_out)
    }

    /// Writes the adapter as trained so far to `dir` as a PEFT folder with factors in `dtype`.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.trainer.lora().save(dir, &self.config, self.rope, &self.base_name, dtype)
    }
}
