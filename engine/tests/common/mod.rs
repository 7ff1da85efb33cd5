//! Shared helpers for the engine's integration tests: the PEFT reference fixtures in ../shared/fixtures.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use engine::adapter::LoraAdapter;
use engine::{AdapterBank, LoadOptions, Logits, Model, SeqInput};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// `../shared/fixtures/<rel>` from the repository root, or `$LORALAND_FIXTURES/<rel>` (test binaries run on
/// another machine, see `scripts/gpu-check.sh`).
pub fn fixture(rel: &str) -> PathBuf {
    match std::env::var_os("LORALAND_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(rel),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures").join(rel),
    }
}

/// The SentencePiece fixture's folder (`make spm-fixture`): data/fixtures/mistral-spm, or `$LORALAND_SPM_FIXTURE`.
pub fn spm_fixture() -> PathBuf {
    let p = std::env::var_os("LORALAND_SPM_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/fixtures/mistral-spm"));
    assert!(p.join("reference.json").is_file(), "{} is missing: run `make spm-fixture` first", p.display());
    p
}

/// A tiny fixture set (`tiny-llama`, `tiny-mistral`): the model, the adapters of the reference rows in a bank, the
/// rows' adapter slots, and the reference tensors.
pub struct TinySet {
    pub model: Model,
    pub bank: AdapterBank,
    pub slots: Vec<Option<usize>>,
    pub adapter_names: Vec<String>,
    pub reference: HashMap<String, Tensor>,
}

pub fn tiny_set(name: &str) -> TinySet {
    tiny_set_on(name, &LoadOptions::default())
}

/// [`tiny_set`] with the model and adapters on `opts.device` in `opts.dtype`.
pub fn tiny_set_on(name: &str, opts: &LoadOptions) -> TinySet {
    let model = Model::load(&fixture(&format!("{name}/base")), opts).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}/reference.json"))).unwrap()).unwrap();
    let mut adapters = Vec::new();
    let mut adapter_names = Vec::new();
    let mut slots = Vec::new();
    for row in json["rows"].as_array().unwrap() {
        match row.as_str() {
            None => slots.push(None),
            Some(a) => {
                let dir = fixture(&format!("{name}/adapters/{a}"));
                adapters.push(Arc::new(LoraAdapter::load(&dir, &model.adapter_target()).unwrap()));
                adapter_names.push(a.to_string());
                slots.push(Some(adapters.len() - 1));
            }
        }
    }
    let bank = AdapterBank::new(adapters, model.config().num_hidden_layers).unwrap();
    let reference =
        candle_core::safetensors::load(fixture(&format!("{name}/reference.safetensors")), &Device::Cpu).unwrap();
    TinySet { model, bank, slots, adapter_names, reference }
}

/// Rows of an i64 `[rows, n]` tensor as u32 token lists.
pub fn token_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>().unwrap().into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
}

/// Largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// The reference tensors of a tiny fixture set.
pub fn tiny_set_reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("{name}/reference.safetensors")), &Device::Cpu).unwrap()
}

/// The logits of the set's reference batch (base and adapter rows together, every position), `[rows, t, vocab]`
/// on the CPU.
pub fn mixed_batch_logits(set: &TinySet) -> Tensor {
    let ids = token_rows(&set.reference["input_ids"]);
    let mut caches: Vec<_> = ids.iter().map(|_| set.model.new_cache()).collect();
    let mut seqs: Vec<SeqInput<'_>> = ids
        .iter()
        .zip(caches.iter_mut())
        .zip(&set.slots)
        .map(|((tokens, cache), &adapter)| SeqInput { tokens, cache, adapter })
        .collect();
    let logits = set.model.forward(&mut seqs, &set.bank, Logits::All).unwrap();
    logits.to_device(&Device::Cpu).unwrap().reshape(set.reference["logits"].dims3().unwrap()).unwrap()
}

/// Greedy decoding of every row in one mixed batch: prefill together, then decode together.
pub fn greedy_mixed(set: &TinySet, prompts: &[Vec<u32>], slots: &[Option<usize>], n: usize) -> Vec<Vec<u32>> {
    let mut caches: Vec<_> = prompts.iter().map(|_| set.model.new_cache()).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut next: Vec<Vec<u32>> = prompts.to_vec();
    for _ in 0..n {
        let mut seqs: Vec<SeqInput<'_>> = next
            .iter()
            .zip(caches.iter_mut())
            .zip(slots)
            .map(|((tokens, cache), &adapter)| SeqInput { tokens, cache, adapter })
            .collect();
        let logits = set.model.forward(&mut seqs, &set.bank, Logits::Last).unwrap();
        let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        for (i, t) in argmax.into_iter().enumerate() {
            out[i].push(t);
            next[i] = vec![t];
        }
    }
    out
}
