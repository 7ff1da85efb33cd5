//! PEFT LoRA adapters: loading `adapter_model.safetensors`, validating every tensor against the base model, and the
//! bank that applies many adapters to one batch (see [`bank`]).
//!
//! An adapter never modifies the base weights: each targeted linear layer computes `W x + s · B (A x)` with the
//! adapter's own `A`, `B` and scale `s` (alpha / r, or alpha / sqrt(r) with rsLoRA).
//!
//! Factors are held in the activation dtype, except on the CPU, where factors stored in bf16 (what our trainer and
//! most fine-tuning runs save) stay in bf16: the CPU op widens them as it reads them, exactly, and with 16 rows on
//! 16 different adapters a decode step reads each row's factors, so half the bytes is a faster step.

pub mod bank;
pub mod config;
pub mod merge;
pub mod plan;
pub mod sgmv;
#[cfg(feature = "cuda")]
mod sgmv_cuda;

pub use bank::AdapterBank;
pub use config::AdapterConfig;
pub use plan::{LoraPlan, Segment};

use crate::config::RopeStyle;
use crate::{Error, ModelConfig, Module, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// What an adapter must fit: the base model's shapes and weight layout.
#[derive(Clone, Debug)]
pub struct AdapterTarget {
    /// The base model's architecture.
    pub config: ModelConfig,
    /// GGUF bases store q/k rows permuted for interleaved RoPE; adapter `B` rows are permuted to match.
    pub rope_style: RopeStyle,
    /// Where the adapter's tensors live.
    pub device: Device,
    /// The dtype of the activations.
    pub dtype: DType,
}

/// One module's LoRA factors, transposed for `s · x A^T B^T`.
#[derive(Clone, Debug)]
pub struct LoraWeights {
    /// `A^T`, `[in, r]`.
    pub a_t: Tensor,
    /// `B^T`, `[r, out]`.
    pub b_t: Tensor,
    /// The scale `s` (alpha / r, or alpha / sqrt(r)).
    pub scale: f32,
}

/// A loaded LoRA adapter: per layer, the factors of each targeted module.
#[derive(Debug)]
pub struct LoraAdapter {
    /// The adapter's configuration.
    pub config: AdapterConfig,
    layers: Vec<[Option<LoraWeights>; 7]>,
    bytes: usize,
}

impl LoraAdapter {
    /// Loads the PEFT adapter in `dir` for `target`, checking every tensor name and shape.
    pub fn load(dir: &Path, target: &AdapterTarget) -> Result<Self> {
        let (config, tensors) = read_peft(dir)?;
        Self::from_tensors(config, tensors, dir, target)
    }

    /// Builds an adapter from PEFT-named tensors (`base_model.model.model.layers.N.<module>.lora_{A,B}.weight`).
    pub fn from_tensors(
        config: AdapterConfig,
        tensors: HashMap<String, Tensor>,
        dir: &Path,
        target: &AdapterTarget,
    ) -> Result<Self> {
        let cfg = &target.config;
        let mut by_key: HashMap<(usize, Module, char), (String, Tensor)> = HashMap::new();
        for (name, t) in tensors {
            let key = parse_tensor_name(&name, cfg.num_hidden_layers)
                .filter(|(_, m, _)| config.target_modules.contains(m))
                .ok_or_else(|| Error::UnexpectedTensor { path: dir.to_path_buf(), tensor: name.clone() })?;
            by_key.insert(key, (name, t));
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut total = 0;
        for layer in 0..cfg.num_hidden_layers {
            let mut mods: [Option<LoraWeights>; 7] = Default::default();
            for &module in &config.target_modules {
                let (r, scale) = config.rank_and_scale(layer, module);
                let (fan_in, fan_out) = cfg.module_shape(module);
                let mut take = |which: char, expected: [usize; 2]| -> Result<(Tensor, DType)> {
                    let (name, t) = by_key.remove(&(layer, module, which)).ok_or_else(|| Error::MissingTensor {
                        path: dir.to_path_buf(),
                        tensor: peft_tensor_name(layer, module, which),
                    })?;
                    if t.dims() != expected {
                        return Err(Error::ShapeMismatch {
                            path: dir.to_path_buf(),
                            tensor: name,
                            expected: expected.to_vec(),
                            got: t.dims().to_vec(),
                        });
                    }
                    Ok((t.to_dtype(DType::F32)?, t.dtype()))
                };
                let (a, a_dtype) = take('A', [r, fan_in])?;
                let (b, b_dtype) = take('B', [fan_out, r])?;
                let store = storage_dtype(target, a_dtype, b_dtype);
                let b = match (target.rope_style, module) {
                    (RopeStyle::Interleaved, Module::Q) => permute_rows_for_gguf(&b, cfg.num_attention_heads)?,
                    (RopeStyle::Interleaved, Module::K) => permute_rows_for_gguf(&b, cfg.num_key_value_heads)?,
                    _ => b,
                };
                let a_t = a.t()?.contiguous()?.to_dtype(store)?.to_device(&target.device)?;
                let b_t = b.t()?.contiguous()?.to_dtype(store)?.to_device(&target.device)?;
                total += (a_t.elem_count() + b_t.elem_count()) * store.size_in_bytes();
                mods[module.index()] = Some(LoraWeights { a_t, b_t, scale: scale as f32 });
            }
            layers.push(mods);
        }
        Ok(Self { config, layers, bytes: total })
    }

    /// A random adapter for `target` (see [`random_peft`]), as loaded from a file storing its tensors in `stored`.
    pub fn random(target: &AdapterTarget, r: usize, modules: &[Module], seed: u64, stored: DType) -> Result<Self> {
        let (json, tensors) = random_peft(&target.config, r, modules, seed, stored)?;
        let config = AdapterConfig::parse(&json, Path::new("random"))?;
        Self::from_tensors(config, tensors, Path::new("random"), target)
    }

    /// A copy of the adapter for `target` (a host copy moved to the GPU), its factors in the dtype
    /// [`storage_dtype`] picks for `target`.
    pub fn to_target(&self, target: &AdapterTarget) -> Result<Self> {
        let mut bytes = 0;
        let mut copy = |t: &Tensor, dtype: DType| -> Result<Tensor> {
            let t = t.to_dtype(dtype)?.to_device(&target.device)?;
            bytes += t.elem_count() * dtype.size_in_bytes();
            Ok(t)
        };
        let layers = self
            .layers
            .iter()
            .map(|mods| -> Result<[Option<LoraWeights>; 7]> {
                let mut out: [Option<LoraWeights>; 7] = Default::default();
                for (o, w) in out.iter_mut().zip(mods) {
                    if let Some(w) = w {
                        let dtype = storage_dtype(target, w.a_t.dtype(), w.b_t.dtype());
                        let (a_t, b_t) = (copy(&w.a_t, dtype)?, copy(&w.b_t, dtype)?);
                        *o = Some(LoraWeights { a_t, b_t, scale: w.scale });
                    }
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(Self { config: self.config.clone(), layers, bytes })
    }

    /// The factors of `module` in `layer`, if the adapter targets it.
    pub fn weights(&self, layer: usize, module: Module) -> Option<&LoraWeights> {
        self.layers.get(layer).and_then(|m| m[module.index()].as_ref())
    }

    /// Memory held by the adapter's tensors.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The largest rank over all modules.
    pub fn max_rank(&self) -> usize {
        self.layers.iter().flatten().flatten().map(|w| w.a_t.dims()[1]).max().unwrap_or(0)
    }
}

/// Reads the PEFT adapter folder `dir`: its validated `adapter_config.json` and the tensors of its
/// `adapter_model.safetensors` (on the CPU, as stored), not yet checked against a model.
pub fn read_peft(dir: &Path) -> Result<(AdapterConfig, HashMap<String, Tensor>)> {
    let config = AdapterConfig::load(dir)?;
    let weights_err = |reason: String| Error::AdapterWeights { path: dir.to_path_buf(), reason };
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).map_err(|e| weights_err(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| weights_err(format!("cannot parse: {e}")))?;
    Ok((config, tensors))
}

/// The dtype an adapter's factors are held in: the activation dtype, or bf16 on the CPU when both factors are
/// stored in bf16 (kept exactly; see the module docs).
fn storage_dtype(target: &AdapterTarget, a: DType, b: DType) -> DType {
    if target.device.is_cpu() && a == DType::BF16 && b == DType::BF16 {
        DType::BF16
    } else {
        target.dtype
    }
}

/// A random PEFT adapter for a model of `config`: its `adapter_config.json` text and its tensors, with PEFT's names
/// and shapes (rank `r`, alpha `2r`, on `modules`; A ~ N(0, 1/in), B ~ N(0, 0.02)), in `dtype`. For benchmarks and
/// tests; deterministic in `seed`.
pub fn random_peft(
    config: &ModelConfig,
    r: usize,
    modules: &[Module],
    seed: u64,
    dtype: DType,
) -> Result<(String, HashMap<String, Tensor>)> {
    use rand::{Rng, SeedableRng};
    let names: Vec<String> = modules.iter().map(|m| format!("\"{}\"", m.short_name())).collect();
    let json = format!(
        r#"{{"peft_type":"LORA","r":{r},"lora_alpha":{},"target_modules":[{}],"bias":"none"}}"#,
        2 * r,
        names.join(",")
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Box-Muller normals: the weights only need to be random and reproducible.
    let mut normal = |n: usize, std: f64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * std) as f32
            })
            .collect()
    };
    let mut tensors = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        for &m in modules {
            let (fan_in, fan_out) = config.module_shape(m);
            let a = Tensor::from_vec(normal(r * fan_in, 1.0 / (fan_in as f64).sqrt()), (r, fan_in), &Device::Cpu)?;
            let b = Tensor::from_vec(normal(fan_out * r, 0.02), (fan_out, r), &Device::Cpu)?;
            tensors.insert(peft_tensor_name(layer, m, 'A'), a.to_dtype(dtype)?);
            tensors.insert(peft_tensor_name(layer, m, 'B'), b.to_dtype(dtype)?);
        }
    }
    Ok((json, tensors))
}

/// Writes a random PEFT adapter folder (see [`random_peft`]) to `dir`, its tensors saved in `dtype`.
pub fn write_random_peft(
    dir: &Path,
    config: &ModelConfig,
    r: usize,
    modules: &[Module],
    seed: u64,
    dtype: DType,
) -> Result<()> {
    let (json, tensors) = random_peft(config, r, modules, seed, dtype)?;
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("adapter_config.json"), json).map_err(io)?;
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    Ok(())
}

/// The name PEFT writes for a LoRA factor.
pub fn peft_tensor_name(layer: usize, module: Module, which: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{which}.weight", module.path())
}

/// Parses `base_model.model.model.layers.N.self_attn.q_proj.lora_A[.default].weight` into (N, module, 'A').
fn parse_tensor_name(name: &str, num_layers: usize) -> Option<(usize, Module, char)> {
    let rest = name.strip_prefix("base_model.model.")?.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|l| *l < num_layers)?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (path, which) = rest.rsplit_once(".lora_")?;
    let which = match which {
        "A" => 'A',
        "B" => 'B',
        _ => return None,
    };
    let module = Module::ALL.into_iter().find(|m| m.path() == path)?;
    Some((layer, module, which))
}

/// llama.cpp's GGUF conversion permutes q/k rows within each head (`[h, 2, d/2] -> [h, d/2, 2]`) so that interleaved
/// RoPE equals Hugging Face's rotate-half RoPE; an adapter's `B` (rows = output features) must be permuted the same.
fn permute_rows_for_gguf(b: &Tensor, n_heads: usize) -> Result<Tensor> {
    regroup_rows(b, n_heads, 2)
}

/// The inverse of [`permute_rows_for_gguf`] (`[h, d/2, 2] -> [h, 2, d/2]`): a `B` learned against a GGUF base back
/// in Hugging Face's row order.
pub(crate) fn unpermute_rows_from_gguf(b: &Tensor, n_heads: usize) -> Result<Tensor> {
    let half = b.dims2()?.0 / n_heads / 2;
    regroup_rows(b, n_heads, half)
}

/// Splits each head's rows into `[outer, rest]` and transposes the two.
fn regroup_rows(b: &Tensor, n_heads: usize, outer: usize) -> Result<Tensor> {
    let (out, r) = b.dims2()?;
    let inner = out / n_heads / outer;
    Ok(b.reshape((n_heads, outer, inner, r))?.transpose(1, 2)?.contiguous()?.reshape((out, r))?)
}

/// A one-layer, 16-wide model's target on the CPU in f32, for unit tests.
#[cfg(test)]
pub(crate) fn tiny_test_target() -> AdapterTarget {
    let config = ModelConfig::from_hf_json(
        r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":1,
            "num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-5}"#,
    )
    .expect("a valid config");
    AdapterTarget { config, rope_style: RopeStyle::Half, device: Device::Cpu, dtype: DType::F32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peft_names() {
        let n = "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight";
        assert_eq!(parse_tensor_name(n, 4), Some((3, Module::Down, 'B')));
        assert_eq!(parse_tensor_name(n, 3), None, "layer out of range");
        let d = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight";
        assert_eq!(parse_tensor_name(d, 1), Some((0, Module::Q, 'A')));
        assert_eq!(parse_tensor_name("base_model.model.lm_head.weight", 1), None);
        assert_eq!(peft_tensor_name(3, Module::Down, 'B'), n);
    }
}
