//! The trainable LoRA factors: one `A` `[r, in]` and `B` `[out, r]` per targeted module of every layer, initialised
//! as PEFT does (A Kaiming-uniform, B zero, so training starts from the base model), and saved as a PEFT adapter
//! folder (`adapter_config.json` + `adapter_model.safetensors`) that PEFT and our engine both load.

use crate::adapter::{peft_tensor_name, unpermute_rows_from_gguf};
use crate::model::RopeStyle;
use crate::{Error, ModelConfig, Module, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// Shape of the adapter being trained.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraShape {
    /// Rank.
    pub rank: usize,
    /// Alpha; the delta is scaled by alpha / rank.
    pub alpha: f64,
    /// Targeted modules.
    pub targets: Vec<Module>,
}

impl Default for LoraShape {
    /// LoRA Land's setup: r = 8 on q_proj and v_proj (alpha 16).
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, targets: vec![Module::Q, Module::V] }
    }
}

/// One module's factors.
#[derive(Debug)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`, in the base model's row layout (GGUF bases permute q/k rows).
    pub b: Var,
}

/// Every trainable factor of an adapter.
#[derive(Debug)]
pub struct LoraParams {
    shape: LoraShape,
    scale: f64,
    /// Per layer, the factors of each targeted module, indexed by [`Module::index`].
    layers: Vec<[Option<LoraPair>; 7]>,
}

impl LoraParams {
    /// Fresh factors for a model of `config`: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming-uniform with
    /// a = sqrt(5)), B = 0. Deterministic in `seed`.
    pub fn init(config: &ModelConfig, shape: LoraShape, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        if shape.rank == 0 {
            return Err(Error::Training("LoRA rank must be at least 1".into()));
        }
        if shape.targets.is_empty() {
            return Err(Error::Training("LoRA needs at least one target module".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let mut mods: [Option<LoraPair>; 7] = Default::default();
            for &m in &shape.targets {
                let (fan_in, fan_out) = config.module_shape(m);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a: Vec<f32> =
                    (0..shape.rank * fan_in).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Tensor::from_vec(a, (shape.rank, fan_in), device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((fan_out, shape.rank), dtype, device)?;
                mods[m.index()] = Some(LoraPair { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? });
            }
            layers.push(mods);
        }
        let scale = shape.alpha / shape.rank as f64;
        Ok(Self { shape, scale, layers })
    }

    /// The adapter's shape.
    pub fn shape(&self) -> &LoraShape {
        &self.shape
    }

    /// The factors of `module` in `layer`, if targeted.
    pub fn pair(&self, layer: usize, module: Module) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|m| m[module.index()].as_ref())
    }

    /// Every variable, for the optimizer.
    pub fn vars(&self) -> Vec<Var> {
        self.layers.iter().flatten().flatten().flat_map(|p| [p.a.clone(), p.b.clone()]).collect()
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The LoRA delta `scale · (x Aᵀ) Bᵀ` of `module` in `layer` for rows `x` `[n, in]`, or `None`.
    pub(crate) fn delta(&self, layer: usize, module: Module, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(p) = self.pair(layer, module) else { return Ok(None) };
        let down = x.matmul(&p.a.as_tensor().t()?)?;
        Ok(Some((down.matmul(&p.b.as_tensor().t()?)? * self.scale)?))
    }

    /// PEFT's tensors: names `base_model.model.model.layers.N.<module>.lora_{A,B}.weight`, B rows in Hugging Face
    /// order (a GGUF base's q/k permutation undone), in `dtype`.
    pub fn peft_tensors(&self, config: &ModelConfig, rope: RopeStyle, dtype: DType) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (layer, mods) in self.layers.iter().enumerate() {
            for m in Module::ALL {
                let Some(p) = &mods[m.index()] else { continue };
                let b = p.b.as_tensor().to_device(&Device::Cpu)?;
                let b = match (rope, m) {
                    (RopeStyle::Interleaved, Module::Q) => unpermute_rows_from_gguf(&b, config.num_attention_heads)?,
                    (RopeStyle::Interleaved, Module::K) => unpermute_rows_from_gguf(&b, config.num_key_value_heads)?,
                    _ => b,
                };
                out.insert(peft_tensor_name(layer, m, 'A'), p.a.as_tensor().to_device(&Device::Cpu)?.to_dtype(dtype)?);
                out.insert(peft_tensor_name(layer, m, 'B'), b.to_dtype(dtype)?);
            }
        }
        Ok(out)
    }

    /// PEFT's `adapter_config.json` for this adapter (the keys PEFT 0.21 writes for a LoRA adapter).
    pub fn peft_config(&self, base_model: &str) -> serde_json::Value {
        let mut targets: Vec<&str> = self.shape.targets.iter().map(|m| m.short_name()).collect();
        targets.sort_unstable();
        // PEFT writes a whole alpha as an integer.
        let alpha = self.shape.alpha;
        let alpha =
            if alpha.fract() == 0.0 && alpha.abs() < 1e15 { serde_json::json!(alpha as i64) } else { alpha.into() };
        serde_json::json!({
            "alora_invocation_tokens": null,
            "alpha_pattern": {},
            "arrow_config": null,
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "corda_config": null,
            "ensure_weight_tying": false,
            "eva_config": null,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "kasa_config": null,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_bias": false,
            "lora_dropout": 0.0,
            "lora_ga_config": null,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "monteclora_config": null,
            "peft_type": "LORA",
            "peft_version": "0.21.2",
            "qalora_group_size": 16,
            "r": self.shape.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "target_parameters": null,
            "task_type": "CAUSAL_LM",
            "trainable_token_indices": null,
            "use_bdlora": null,
            "use_dora": false,
            "use_qalora": false,
            "use_rslora": false,
            "velora_config": null,
        })
    }

    /// Writes the adapter folder `dir` (created if missing): `adapter_config.json` and `adapter_model.safetensors`
    /// with the factors in `dtype` (bf16 keeps the demo adapters near 1 MB).
    pub fn save(
        &self,
        dir: &Path,
        config: &ModelConfig,
        rope: RopeStyle,
        base_model: &str,
        dtype: DType,
    ) -> Result<()> {
        let io = |source| Error::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let json = serde_json::to_string_pretty(&self.peft_config(base_model)).expect("a JSON value serializes");
        std::fs::write(dir.join("adapter_config.json"), json + "\n").map_err(io)?;
        candle_core::safetensors::save(
            &self.peft_tensors(config, rope, dtype)?,
            dir.join("adapter_model.safetensors"),
        )?;
        Ok(())
    }
}
