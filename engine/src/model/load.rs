//! Loading a [`Model`] from a Hugging Face folder (memory-mapped safetensors, sharded or not) or from a GGUF file
//! (quantized weights kept quantized for the base matmuls, or dequantized / requantized on request).

use super::layer::DecoderLayer;
use super::linear::Linear;
use super::rope::Rope;
use super::Model;
use crate::config::RopeStyle;
use crate::{Error, ModelConfig, ModelFiles, ModelFormat, Module, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to do with a GGUF file's quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuantMode {
    /// Keep them as stored (Q4_0, Q4_1, Q8_0, K-quants...); matmuls run on the quantized blocks.
    #[default]
    Keep,
    /// Requantize Q4_0/Q4_1 to Q8_0 at load: more memory, and faster on CPU, where candle's Q4_1 kernel is scalar.
    Q8,
    /// Dequantize everything to the activation dtype (the reference path for numerical checks).
    Dequantize,
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the weights go.
    pub device: Device,
    /// Activation and (dense) weight dtype: f32 on CPU; bf16/f16 where the device supports them.
    pub dtype: DType,
    /// GGUF quantization handling.
    pub quant: QuantMode,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, quant: QuantMode::Keep }
    }
}

impl Model {
    /// Loads the model at `path` (a GGUF file or a Hugging Face folder).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::locate(path)?;
        match files.format {
            ModelFormat::HfFolder => load_hf(&files.path, opts),
            ModelFormat::Gguf => load_gguf(&files.path, opts),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", index.display())))?;
    let map =
        json["weight_map"].as_object().ok_or_else(|| Error::Config(format!("{}: no weight_map", index.display())))?;
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    let cfg_path = dir.join("config.json");
    let config = ModelConfig::from_hf_json(&std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?)?;
    let files = safetensors_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; like candle and every safetensors loader, we assume no other
    // process truncates them while the model is loaded.
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, opts.dtype, &opts.device)? };
    let h = config.hidden_size;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let lvb = vb.pp(format!("model.layers.{l}"));
        let proj = Module::ALL.map(|m| {
            let (fan_in, fan_out) = config.module_shape(m);
            lvb.get((fan_out, fan_in), &format!("{}.weight", m.path())).map(|w| Linear::Candle(QMatMul::Tensor(w)))
        });
        let proj = collect_array(proj)?;
        layers.push(DecoderLayer {
            attn_norm: lvb.get(h, "input_layernorm.weight")?,
            ffn_norm: lvb.get(h, "post_attention_layernorm.weight")?,
            proj,
        });
    }
    let embed = vb.get((config.vocab_size, h), "model.embed_tokens.weight")?;
    let lm_head =
        if config.tie_word_embeddings { embed.clone() } else { vb.get((config.vocab_size, h), "lm_head.weight")? };
    let norm = vb.get(h, "model.norm.weight")?;
    let lm_head = Linear::Candle(QMatMul::Tensor(lm_head));
    Model::from_parts(config, embed, layers, norm, lm_head, RopeStyle::Half, opts)
}

impl Model {
    /// The model of these weights, with its RoPE tables, on `opts.device` (every loader ends here).
    pub(super) fn from_parts(
        config: ModelConfig,
        embed: Tensor,
        layers: Vec<DecoderLayer>,
        norm: Tensor,
        lm_head: Linear,
        rope_style: RopeStyle,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let rope =
            Rope::new(config.head_dim, config.rope_theta, config.max_position_embeddings, rope_style, &opts.device)?;
        Ok(Model { config, embed, layers, norm, lm_head, rope, device: opts.device.clone(), dtype: opts.dtype })
    }
}

pub(super) fn collect_array(items: [candle_core::Result<Linear>; 7]) -> Result<[Linear; 7]> {
    let v: Vec<Linear> = items.into_iter().collect::<candle_core::Result<_>>()?;
    v.try_into().map_err(|_| Error::Config("expected seven projections".into()))
}

struct GgufReader<'a> {
    content: gguf_file::Content,
    file: std::fs::File,
    path: &'a Path,
    opts: &'a LoadOptions,
}

impl GgufReader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content.tensor(&mut self.file, name, &self.opts.device).map_err(|e| Error::UnsupportedModel {
            path: self.path.to_path_buf(),
            reason: format!("tensor {name}: {e}"),
        })
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(&self.opts.device)?.to_dtype(self.opts.dtype)?)
    }

    fn matmul(&mut self, name: &str) -> Result<Linear> {
        let q = self.qtensor(name)?;
        let q = match (self.opts.quant, q.dtype()) {
            (QuantMode::Dequantize, _) => {
                return Ok(Linear::Candle(QMatMul::Tensor(q.dequantize(&self.opts.device)?.to_dtype(self.opts.dtype)?)))
            }
            (QuantMode::Q8, GgmlDType::Q4_0 | GgmlDType::Q4_1) => {
                QTensor::quantize(&q.dequantize(&self.opts.device)?, GgmlDType::Q8_0)?
            }
            _ => q,
        };
        Ok(Linear::new(QMatMul::from_arc(Arc::new(q))?)?)
    }
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| Error::UnsupportedModel {
        path: path.to_path_buf(),
        reason: format!("not a readable GGUF file: {e}"),
    })?;
    let config = ModelConfig::from_gguf(&content)?;
    let mut r = GgufReader { content, file, path, opts };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let proj = Module::ALL.map(|m| r.matmul(&format!("blk.{l}.{}.weight", m.gguf_name())));
        let proj: Vec<Linear> = proj.into_iter().collect::<Result<_>>()?;
        layers.push(DecoderLayer {
            attn_norm: r.dense(&format!("blk.{l}.attn_norm.weight"))?,
            ffn_norm: r.dense(&format!("blk.{l}.ffn_norm.weight"))?,
            proj: proj.try_into().map_err(|_| Error::Config("expected seven projections".into()))?,
        });
    }
    let embed = r.dense("token_embd.weight")?;
    let lm_head = if config.tie_word_embeddings { r.matmul("token_embd.weight")? } else { r.matmul("output.weight")? };
    let norm = r.dense("output_norm.weight")?;
    Model::from_parts(config, embed, layers, norm, lm_head, RopeStyle::Interleaved, opts)
}
