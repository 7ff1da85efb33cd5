//! The engine on a CUDA GPU (built with `--features cuda`, run by `scripts/gpu-check.sh` on a GPU machine): the PEFT
//! reference fixtures through the SGMV kernels in f32 (logits within 1e-4, greedy tokens equal) and bf16 (logits
//! within 1e-2), and the kernels against their CPU reference on a batch of mixed adapters and ranks.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{greedy_mixed, max_abs_diff, mixed_batch_logits, tiny_set_on, token_rows};
use engine::adapter::{AdapterBank, LoraAdapter, LoraPlan};
use engine::{LoadOptions, Module};
use std::sync::Arc;

fn gpu(dtype: DType) -> LoadOptions {
    LoadOptions { device: Device::new_cuda(0).expect("a CUDA GPU"), dtype, ..Default::default() }
}

fn mixed_batch_logits_match(name: &str, dtype: DType, tolerance: f32) {
    let set = tiny_set_on(name, &gpu(dtype));
    let logits = mixed_batch_logits(&set);
    let expected = &set.reference["logits"];
    for row in 0..expected.dim(0).unwrap() {
        let err = max_abs_diff(&logits.i(row).unwrap(), &expected.i(row).unwrap());
        eprintln!("{name} {dtype:?} row {row} ({:?}): max abs error {err:.2e}", set.slots[row]);
        assert!(err < tolerance, "{name} {dtype:?} row {row}: max abs error {err}");
    }
}

fn greedy_tokens(name: &str) {
    let set = tiny_set_on(name, &gpu(DType::F32));
    let prompts = token_rows(&set.reference["input_ids"]);
    let expected = token_rows(&set.reference["greedy"]);
    let got = greedy_mixed(&set, &prompts, &set.slots, expected[0].len());
    assert_eq!(got, expected, "{name}: greedy tokens of the mixed batch on the GPU");
}

#[test]
fn tiny_llama_f32_logits() {
    mixed_batch_logits_match("tiny-llama", DType::F32, 1e-4);
}

#[test]
fn tiny_mistral_f32_logits() {
    mixed_batch_logits_match("tiny-mistral", DType::F32, 1e-4);
}

#[test]
fn tiny_llama_bf16_logits() {
    mixed_batch_logits_match("tiny-llama", DType::BF16, 1e-2);
}

#[test]
fn tiny_mistral_bf16_logits() {
    mixed_batch_logits_match("tiny-mistral", DType::BF16, 1e-2);
}

#[test]
fn tiny_llama_f32_greedy() {
    greedy_tokens("tiny-llama");
}

#[test]
fn tiny_mistral_f32_greedy() {
    greedy_tokens("tiny-mistral");
}

/// The SGMV kernels against their CPU reference (the same op on the CPU) on one layer of a Mistral-7B-wide module:
/// 25 adapters of ranks 4-16, segments of 1-5 rows, base rows between them.
#[test]
fn sgmv_kernels_equal_the_cpu_reference() {
    let cfg = engine::ModelConfig::preset("mistral-tiny").unwrap();
    let cfg =
        engine::ModelConfig { hidden_size: 4096, num_attention_heads: 32, head_dim: 128, num_hidden_layers: 1, ..cfg };
    let mut slots: Vec<Option<usize>> = Vec::new();
    for i in 0..40usize {
        slots.extend(std::iter::repeat_n(if i % 7 == 3 { None } else { Some(i % 25) }, 1 + i % 5));
    }
    for dtype in [DType::F32, DType::BF16] {
        let mut deltas = Vec::new();
        for device in [Device::Cpu, Device::new_cuda(0).unwrap()] {
            let target = engine::adapter::AdapterTarget {
                config: cfg.clone(),
                rope_style: engine::model::RopeStyle::Half,
                device: device.clone(),
                dtype: if device.is_cpu() { DType::F32 } else { dtype },
            };
            let adapters: Vec<_> = (0..25)
                .map(|s| {
                    Arc::new(LoraAdapter::random(&target, 4 + 4 * (s % 4), &[Module::Q], s as u64, DType::F32).unwrap())
                })
                .collect();
            let bank = AdapterBank::new(adapters, 1).unwrap();
            let xs = Tensor::arange(0f32, (slots.len() * 4096) as f32, &Device::Cpu)
                .unwrap()
                .reshape((slots.len(), 4096))
                .unwrap()
                .affine(1e-3, 0.0)
                .unwrap()
                .sin()
                .unwrap()
                .to_device(&device)
                .unwrap();
            let xs = if device.is_cpu() { xs } else { xs.to_dtype(dtype).unwrap() };
            let base = Tensor::zeros((slots.len(), 4096), xs.dtype(), &device).unwrap();
            let plan = LoraPlan::new(&slots, &device).unwrap().with_strategy("sgmv", &device).unwrap();
            let delta = bank.apply(&plan, 0, Module::Q, &xs, base).unwrap();
            deltas.push(delta.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap());
        }
        let scale = deltas[0].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let err = max_abs_diff(&deltas[0], &deltas[1]);
        eprintln!("sgmv {dtype:?}: max abs error {err:.2e} (largest delta {scale:.2e})");
        let tolerance = if dtype == DType::F32 { 1e-4 } else { 2e-2 } * scale.max(1.0);
        assert!(err < tolerance, "sgmv {dtype:?}: max abs error {err}");
    }
}

/// With room for one adapter on the GPU, alternating two adapters evicts one each time; it comes back from its host
/// copy (no disk read) and gives the same greedy tokens as before.
#[test]
fn evicted_adapters_come_back_from_host_memory_with_the_same_tokens() {
    use engine::registry::ResidencyLimits;
    use engine::{
        AdapterId, Catalog, Engine, EngineConfig, EngineStats, Event, GenerateRequest, Prompt, SamplingParams,
    };
    let mut cfg = EngineConfig::new(common::fixture("tiny-llama/base"));
    cfg.load = gpu(DType::F32);
    cfg.catalog =
        Catalog { adapters_dir: Some(common::fixture("tiny-llama/adapters")), allow_hub: false, ..Default::default() };
    cfg.limits = ResidencyLimits { max_adapters: 1, ..ResidencyLimits::default() };
    let engine = Engine::spawn(cfg).unwrap();
    let run = |adapter: &str| -> Vec<u32> {
        let req = GenerateRequest {
            prompt: Prompt::Tokens((5..25).collect()),
            adapter: Some(AdapterId::new(adapter).unwrap()),
            sampling: SamplingParams::greedy(),
            max_new_tokens: 10,
            stop: vec![],
            ..GenerateRequest::default()
        };
        let mut stream = engine.generate(req).unwrap();
        let mut ids = Vec::new();
        while let Some(ev) = stream.blocking_next() {
            match ev.unwrap() {
                Event::Token(t) => ids.push(t.id),
                Event::Finished(_) => break,
            }
        }
        ids
    };
    let first = [run("qv_r8"), run("all_r4")];
    assert_ne!(first[0], first[1], "the two adapters should differ");
    for _ in 0..2 {
        assert_eq!(run("qv_r8"), first[0]);
        assert_eq!(run("all_r4"), first[1]);
    }
    let evictions = EngineStats::get(&engine.stats().adapter_evictions);
    assert!(evictions >= 5, "expected an eviction per switch, got {evictions}");
}
