//! The multi-adapter forward pass against Hugging Face transformers + PEFT: one mixed batch (base + 4 adapters)
//! gives the reference logits within 1e-4, and greedy decoding in a mixed batch gives the reference tokens.

mod common;

use candle_core::IndexOp;
use common::{greedy_mixed, max_abs_diff, mixed_batch_logits, tiny_set, token_rows};

fn mixed_batch_logits_match(name: &str) {
    let set = tiny_set(name);
    let logits = mixed_batch_logits(&set);
    let expected = &set.reference["logits"];
    for row in 0..expected.dim(0).unwrap() {
        let err = max_abs_diff(&logits.i(row).unwrap(), &expected.i(row).unwrap());
        assert!(err < 1e-4, "{name} row {row} ({:?}): max abs error {err}", set.slots[row]);
    }
    // Each adapter must actually change the output.
    for row in 1..expected.dim(0).unwrap() {
        let moved = max_abs_diff(&expected.i(row).unwrap(), &expected.i(0).unwrap());
        assert!(moved > 1e-2, "{name} row {row}: the adapter should move the logits");
    }
}

fn greedy_tokens_match(name: &str) {
    let set = tiny_set(name);
    let prompts = token_rows(&set.reference["input_ids"]);
    let expected = token_rows(&set.reference["greedy"]);
    let got = greedy_mixed(&set, &prompts, &set.slots, expected[0].len());
    assert_eq!(got, expected, "{name}: greedy tokens of the mixed batch");
}

#[test]
fn tiny_llama_mixed_batch_logits() {
    mixed_batch_logits_match("tiny-llama");
}

#[test]
fn tiny_mistral_mixed_batch_logits_with_sliding_window() {
    mixed_batch_logits_match("tiny-mistral");
}

#[test]
fn tiny_llama_greedy_tokens() {
    greedy_tokens_match("tiny-llama");
}

#[test]
fn tiny_mistral_greedy_tokens() {
    greedy_tokens_match("tiny-mistral");
}

/// The same request alone and inside a mixed batch of 8 (different adapters, prompt lengths and positions) gives
/// the same greedy tokens (decode steps that mix adapters go through the SGMV op).
#[test]
fn request_alone_equals_request_in_mixed_batch_of_8() {
    let set = tiny_set("tiny-llama");
    let prompts = token_rows(&set.reference["input_ids"]);
    let probe = prompts[2][..17].to_vec();
    let probe_slot = set.slots[2];
    let alone = greedy_mixed(&set, std::slice::from_ref(&probe), &[probe_slot], 10);

    let mut batch = Vec::new();
    let mut slots = Vec::new();
    for i in 0..8usize {
        if i == 5 {
            batch.push(probe.clone());
            slots.push(probe_slot);
        } else {
            batch.push(prompts[i % 5][..(5 + 2 * i).min(24)].to_vec());
            slots.push(set.slots[(i + 1) % 5]);
        }
    }
    let mixed = greedy_mixed(&set, &batch, &slots, 10);
    assert_eq!(mixed[5], alone[0]);
}

/// An adapter saved in bf16 (as our trainer saves them) is held in bf16 on the CPU, half the bytes of f32, and the
/// CPU op reads it exactly: the logits equal those of the same values saved in f32, bit for bit.
#[test]
fn bf16_adapters_are_held_in_bf16_and_read_exactly() {
    use candle_core::{DType, Device};
    use engine::adapter::LoraAdapter;
    use engine::{AdapterBank, LoadOptions, Logits, Model, Module, SeqInput};
    use std::sync::Arc;

    let src = common::fixture("tiny-llama/adapters/all_r4");
    let tensors = candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&common::fixture("tiny-llama/base"), &LoadOptions::default()).unwrap();
    let mut loaded = Vec::new();
    for (name, widen) in [("bf16", false), ("f32", true)] {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::copy(src.join("adapter_config.json"), d.join("adapter_config.json")).unwrap();
        let saved: std::collections::HashMap<_, _> = tensors
            .iter()
            .map(|(k, t)| {
                let t = t.to_dtype(DType::BF16).unwrap();
                (k.clone(), if widen { t.to_dtype(DType::F32).unwrap() } else { t })
            })
            .collect();
        candle_core::safetensors::save(&saved, d.join("adapter_model.safetensors")).unwrap();
        loaded.push(Arc::new(LoraAdapter::load(&d, &model.adapter_target()).unwrap()));
    }
    let (held16, held32) = (&loaded[0], &loaded[1]);
    assert_eq!(held16.weights(0, Module::Q).unwrap().a_t.dtype(), DType::BF16);
    assert_eq!(held32.weights(0, Module::Q).unwrap().a_t.dtype(), DType::F32);
    assert_eq!(2 * held16.bytes(), held32.bytes());
    let ids = &token_rows(&common::tiny_set_reference("tiny-llama")["input_ids"])[1];
    let logits: Vec<Vec<Vec<f32>>> = loaded
        .iter()
        .map(|a| {
            let bank = AdapterBank::new(vec![a.clone()], model.config().num_hidden_layers).unwrap();
            let mut cache = model.new_cache();
            let mut seqs = [SeqInput { tokens: ids, cache: &mut cache, adapter: Some(0) }];
            model.forward(&mut seqs, &bank, Logits::All).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
        })
        .collect();
    assert_eq!(logits[0], logits[1]);
}

/// Prompt log-probabilities through the engine (LoRAX's `decoder_input_details`), for the five reference rows at
/// once, their prompts prefilled in chunks of a small step budget: each prompt token's log-probability equals the
/// log-softmax of PEFT's logits at the position before it.
#[test]
fn prompt_logprobs_through_the_batcher_equal_peft_in_chunks() {
    use engine::{AdapterId, Catalog, Engine, EngineConfig, Event, GenerateRequest, Prompt};
    let reference = common::tiny_set_reference("tiny-llama");
    let rows = token_rows(&reference["input_ids"]);
    let logits = &reference["logits"];
    let adapters: Vec<Option<&str>> =
        vec![None, Some("qv_r8"), Some("all_r4"), Some("attn_r16_rslora"), Some("mlp_r2")];
    let mut cfg = EngineConfig::new(common::fixture("tiny-llama/base"));
    cfg.catalog =
        Catalog { adapters_dir: Some(common::fixture("tiny-llama/adapters")), allow_hub: false, ..Default::default() };
    cfg.max_batch_tokens = Some(11); // 24-token prompts over several steps, chunks crossing rows
    let engine = Engine::spawn(cfg).unwrap();
    let streams: Vec<_> = (rows.iter().zip(&adapters))
        .map(|(ids, adapter)| {
            engine
                .generate(GenerateRequest {
                    prompt: Prompt::Tokens(ids.clone()),
                    adapter: adapter.map(|a| AdapterId::new(a).unwrap()),
                    max_new_tokens: 2,
                    prompt_logprobs: true,
                    ..Default::default()
                })
                .unwrap()
        })
        .collect();
    for (r, mut stream) in streams.into_iter().enumerate() {
        let finished = loop {
            match stream.blocking_next().unwrap().unwrap() {
                Event::Finished(f) => break f,
                Event::Token(_) => {}
            }
        };
        let got = &finished.prompt_logprobs;
        assert_eq!(got.len(), rows[r].len() - 1, "row {r}: one per prompt token after the first");
        let row = candle_nn::ops::log_softmax(&logits.i(r).unwrap(), 1).unwrap().to_vec2::<f32>().unwrap();
        for (j, lp) in got.iter().enumerate() {
            let expected = row[j][rows[r][j + 1] as usize];
            assert!((lp - expected).abs() < 1e-4, "row {r} ({:?}) token {}: {lp} vs {expected}", adapters[r], j + 1);
        }
    }
    // Not asked for, not computed.
    let plain = engine
        .generate(GenerateRequest { prompt: Prompt::Tokens(rows[0].clone()), max_new_tokens: 1, ..Default::default() })
        .unwrap();
    let mut plain = plain;
    let f = loop {
        if let Event::Finished(f) = plain.blocking_next().unwrap().unwrap() {
            break f;
        }
    };
    assert!(f.prompt_logprobs.is_empty());
}
