//! PEFT's `adapter_config.json` for LoRA: rank, alpha, target modules and per-module overrides.
//! See PEFT's `LoraConfig`; only what changes the forward pass is read, and what we cannot honour is refused.

use crate::{Error, Module, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// A validated LoRA adapter configuration.
#[derive(Clone, Debug)]
pub struct AdapterConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// rsLoRA scaling (alpha / sqrt(r)) instead of alpha / r.
    pub use_rslora: bool,
    /// The modules the adapter targets.
    pub target_modules: BTreeSet<Module>,
    /// Rank overrides: key (a module name or path suffix) to rank.
    pub rank_pattern: HashMap<String, usize>,
    /// Alpha overrides: key to alpha.
    pub alpha_pattern: HashMap<String, f64>,
}

#[derive(Deserialize)]
struct Raw {
    peft_type: Option<String>,
    r: Option<usize>,
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    target_modules: Option<Value>,
    #[serde(default)]
    rank_pattern: HashMap<String, usize>,
    #[serde(default)]
    alpha_pattern: HashMap<String, f64>,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    modules_to_save: Option<Value>,
    layers_to_transform: Option<Value>,
    bias: Option<String>,
}

impl AdapterConfig {
    /// Reads and validates `<dir>/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("adapter_config.json");
        if !path.is_file() {
            return Err(Error::AdapterConfigMissing(dir.to_path_buf()));
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        Self::parse(&text, dir)
    }

    /// Parses the JSON text of an adapter config; `dir` names the adapter in errors.
    pub fn parse(text: &str, dir: &Path) -> Result<Self> {
        let field_err =
            |field: &str, reason: String| Error::AdapterConfig { path: dir.to_path_buf(), field: field.into(), reason };
        let unsupported = |field: &str, reason: &str| Error::AdapterUnsupported {
            path: dir.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        };
        let raw: Raw = serde_json::from_str(text).map_err(|e| field_err("(json)", e.to_string()))?;
        if let Some(t) = raw.peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(unsupported("peft_type", &format!("{t} adapters are not LoRA")));
        }
        if raw.use_dora {
            return Err(unsupported("use_dora", "DoRA adapters need magnitude vectors this engine does not apply"));
        }
        if raw.fan_in_fan_out {
            return Err(unsupported("fan_in_fan_out", "only Linear (not Conv1D) layers are supported"));
        }
        if raw.modules_to_save.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(unsupported("modules_to_save", "fully trained extra modules would replace base weights"));
        }
        if raw.layers_to_transform.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("layers_to_transform", "adapters must cover every layer"));
        }
        if raw.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(unsupported("bias", "trained biases are not applied"));
        }
        let r = raw.r.ok_or_else(|| field_err("r", "missing".into()))?;
        if r == 0 {
            return Err(field_err("r", "must be positive".into()));
        }
        let lora_alpha = raw.lora_alpha.unwrap_or(8.0);
        let target_modules = match raw.target_modules {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    let name = v.as_str().ok_or_else(|| field_err("target_modules", format!("{v} is not a string")))?;
                    Module::from_name(name)
                        .ok_or_else(|| Error::UnknownModule { path: dir.to_path_buf(), module: name.to_string() })
                })
                .collect::<Result<BTreeSet<_>>>()?,
            Some(Value::String(s)) => match Module::from_name(&s) {
                Some(m) => BTreeSet::from([m]),
                None => {
                    return Err(unsupported(
                        "target_modules",
                        "a regular expression is not supported; list the modules",
                    ))
                }
            },
            _ => return Err(field_err("target_modules", "missing or not a list".into())),
        };
        if target_modules.is_empty() {
            return Err(field_err("target_modules", "is empty".into()));
        }
        for (key, rank) in &raw.rank_pattern {
            if *rank == 0 {
                return Err(field_err("rank_pattern", format!("rank of {key} must be positive")));
            }
        }
        Ok(Self {
            r,
            lora_alpha,
            use_rslora: raw.use_rslora,
            target_modules,
            rank_pattern: raw.rank_pattern,
            alpha_pattern: raw.alpha_pattern,
        })
    }

    /// Rank and scale of `module` in `layer`, after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_scale(&self, layer: usize, module: Module) -> (usize, f64) {
        let path = format!("model.layers.{layer}.{}", module.path());
        let r = pattern_value(&self.rank_pattern, &path).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, &path).unwrap_or(self.lora_alpha);
        let scale = if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        (r, scale)
    }
}

/// PEFT matches a pattern key against the end of a module's dotted path; the longest match wins.
fn pattern_value<T: Copy>(patterns: &HashMap<String, T>, path: &str) -> Option<T> {
    patterns
        .iter()
        .filter(|(key, _)| path == key.as_str() || path.ends_with(&format!(".{key}")))
        .max_by_key(|(key, _)| key.len())
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AdapterConfig> {
        AdapterConfig::parse(json, Path::new("/a"))
    }

    #[test]
    fn scales_and_patterns() {
        let c = parse(
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],
                "rank_pattern":{"model.layers.1.self_attn.q_proj":4},"alpha_pattern":{"v_proj":4}}"#,
        )
        .unwrap();
        assert_eq!(c.rank_and_scale(0, Module::Q), (8, 2.0));
        assert_eq!(c.rank_and_scale(1, Module::Q), (4, 4.0));
        assert_eq!(c.rank_and_scale(0, Module::V), (8, 0.5));
        let rs = parse(r#"{"r":16,"lora_alpha":16,"use_rslora":true,"target_modules":["q_proj"]}"#).unwrap();
        assert_eq!(rs.rank_and_scale(0, Module::Q), (16, 4.0));
    }

    #[test]
    fn refuses_what_it_cannot_apply() {
        let dora = parse(r#"{"r":8,"target_modules":["q_proj"],"use_dora":true}"#).unwrap_err();
        assert!(dora.to_string().contains("`use_dora` is not supported"), "{dora}");
        let mts = parse(r#"{"r":8,"target_modules":["q_proj"],"modules_to_save":["lm_head"]}"#).unwrap_err();
        assert!(mts.to_string().contains("`modules_to_save` is not supported"), "{mts}");
        let unknown = parse(r#"{"r":8,"target_modules":["q_proj","lm_head"]}"#).unwrap_err();
        assert!(matches!(unknown, Error::UnknownModule { ref module, .. } if module == "lm_head"), "{unknown}");
        let no_r = parse(r#"{"target_modules":["q_proj"]}"#).unwrap_err();
        assert!(no_r.to_string().contains("field `r`: missing"), "{no_r}");
    }
}
