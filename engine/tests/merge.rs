//! Adapter merging (LoRAX's `merged_adapters`) against PEFT's `add_weighted_adapter`, on the tiny Llama fixture
//! (engine/tests/fixtures/merge, made by scripts/merge-fixture/make.py): every strategy gives PEFT's merged factors
//! and PEFT's logits with them; through the engine a merge runs as an adapter of its own, is merged once and kept,
//! and a merge that cannot be made fails only its own request, saying why.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff, token_rows};
use engine::adapter::merge::{merge, MajoritySign, MaskSite, MergeInput, MergeParams, MergeStrategy};
use engine::adapter::{AdapterConfig, LoraAdapter};
use engine::registry::ResidencyLimits;
use engine::{
    AdapterBank, AdapterId, Catalog, Engine, EngineConfig, EngineStats, Error, Event, Field, GenerateRequest,
    LoadOptions, Logits, MergedAdapters, Model, Prompt, SamplingParams, SeqInput,
};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn merge_fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/merge").join(rel)
}

/// The folder of a fixture adapter: the shared `qv_r8`, or one of the merge fixture's own.
fn adapter_dir(name: &str) -> PathBuf {
    match name {
        "qv_r8" | "all_r4" | "mlp_r2" => fixture(&format!("tiny-llama/adapters/{name}")),
        _ => merge_fixture(&format!("adapters/{name}")),
    }
}

struct Case {
    name: String,
    adapters: Vec<String>,
    weights: Vec<f64>,
    params: MergeParams,
}

fn cases() -> Vec<Case> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merge_fixture("reference.json")).unwrap()).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            adapters: c["adapters"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect(),
            weights: c["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect(),
            params: MergeParams {
                strategy: MergeStrategy::from_name(c["combination_type"].as_str().unwrap()).unwrap(),
                density: c["density"].as_f64().unwrap_or(1.0),
                majority_sign: c["majority_sign_method"]
                    .as_str()
                    .map_or(MajoritySign::Total, |m| MajoritySign::from_name(m).unwrap()),
            },
        })
        .collect()
}

fn read_adapter(name: &str) -> (AdapterConfig, HashMap<String, Tensor>) {
    let dir = adapter_dir(name);
    let config = AdapterConfig::load(&dir).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    (config, tensors)
}

/// The logits of every position of `ids` with `adapter`, `[t, vocab]`.
fn logits_with(model: &Model, adapter: LoraAdapter, ids: &[u32]) -> Tensor {
    let bank = AdapterBank::new(vec![Arc::new(adapter)], model.config().num_hidden_layers).unwrap();
    let mut cache = model.new_cache();
    let mut seqs = [SeqInput { tokens: ids, cache: &mut cache, adapter: Some(0) }];
    model.forward(&mut seqs, &bank, Logits::All).unwrap().to_device(&Device::Cpu).unwrap()
}

#[test]
fn every_strategy_gives_pefts_merged_factors_and_logits() {
    let reference = candle_core::safetensors::load(merge_fixture("reference.safetensors"), &Device::Cpu).unwrap();
    let model = Model::load(&fixture("tiny-llama/base"), &LoadOptions::default()).unwrap();
    let ids = token_rows(&reference["input_ids"]).remove(0);
    let cases = cases();
    assert_eq!(cases.len(), 9);
    for case in &cases {
        let read: Vec<_> = case.adapters.iter().map(|a| read_adapter(a)).collect();
        let inputs: Vec<MergeInput<'_>> = read
            .iter()
            .zip(&case.adapters)
            .zip(&case.weights)
            .map(|(((config, tensors), name), &weight)| MergeInput { name, config, tensors, weight })
            .collect();
        // DARE's masks: the ones PEFT drew.
        let mut drawn = 0;
        let mut masks = |site: MaskSite<'_>, len: usize| {
            let key = format!("{}/mask/{}/{}", case.name, case.adapters[site.input], site.tensor);
            let mask: Vec<u8> =
                reference.get(&key).unwrap_or_else(|| panic!("no mask {key}")).to_vec2().unwrap().concat();
            assert_eq!(mask.len(), len, "{key}");
            drawn += 1;
            mask.into_iter().map(|m| m == 1).collect()
        };
        let (config, tensors) = merge(&inputs, &case.params, model.config(), &mut masks).unwrap();
        let expected_masks = reference.keys().filter(|k| k.starts_with(&format!("{}/mask/", case.name))).count();
        assert_eq!(drawn, expected_masks, "{}: a mask for every factor DARE prunes", case.name);
        let prefix = format!("{}/", case.name);
        let expected: BTreeSet<&str> = reference
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|k| !k.starts_with("mask/") && *k != "logits")
            .collect();
        assert_eq!(tensors.keys().map(String::as_str).collect::<BTreeSet<_>>(), expected, "{}", case.name);
        for (name, t) in &tensors {
            let err = max_abs_diff(t, &reference[&format!("{prefix}{name}")]);
            assert!(err < 1e-6, "{} {name}: max abs error {err}", case.name);
        }
        assert_eq!((config.r, config.lora_alpha), (8, 8.0), "{}: PEFT's merged rank and alpha", case.name);
        let adapter =
            LoraAdapter::from_tensors(config, tensors, Path::new(&case.name), &model.adapter_target()).unwrap();
        let logits = logits_with(&model, adapter, &ids);
        let err = max_abs_diff(&logits, &reference[&format!("{prefix}logits")]);
        assert!(err < 1e-4, "{}: logits max abs error {err}", case.name);
    }
    // The strategies differ from one another on these adapters.
    let logits = |case: &str| &reference[&format!("{case}/logits")];
    for (a, b) in
        [("linear_three", "ties_total"), ("ties_total", "dare_ties"), ("linear", "dare_linear"), ("linear", "negative")]
    {
        assert!(max_abs_diff(logits(a), logits(b)) > 1e-3, "{a} and {b} should differ");
    }
}

fn engine_config() -> EngineConfig {
    let mut cfg = EngineConfig::new(fixture("tiny-llama/base"));
    let folders =
        ["qv_r8", "qkv_r8", "ov_r8", "all_r4", "mlp_r2"].map(|a| (AdapterId::new(a).unwrap(), adapter_dir(a)));
    cfg.catalog = Catalog { folders: folders.into(), ..Default::default() };
    cfg.max_input_tokens = 64;
    cfg.max_new_tokens = 32;
    cfg
}

fn merged(ids: &[&str], weights: &[f64], strategy: MergeStrategy, density: f64) -> MergedAdapters {
    MergedAdapters {
        ids: ids.iter().map(|a| AdapterId::new(a).unwrap()).collect(),
        weights: weights.to_vec(),
        params: MergeParams { strategy, density, majority_sign: MajoritySign::Total },
    }
}

/// The first 12 tokens of the fixture's reference prompt (random tokens, on which the adapters differ).
fn prompt() -> Vec<u32> {
    let reference = candle_core::safetensors::load(merge_fixture("reference.safetensors"), &Device::Cpu).unwrap();
    token_rows(&reference["input_ids"]).remove(0)[..12].to_vec()
}

fn request(adapter: Option<&str>, merge: Option<MergedAdapters>) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(prompt()),
        adapter: adapter.map(|a| AdapterId::new(a).unwrap()),
        merged_adapters: merge,
        sampling: SamplingParams::greedy(),
        max_new_tokens: 10,
        ..GenerateRequest::default()
    }
}

/// The tokens a request generates, each with its log-probability (the tiny model's greedy text repeats one token
/// whatever the adapter; the log-probabilities tell adapters apart).
fn tokens(engine: &engine::EngineHandle, request: GenerateRequest) -> engine::Result<Vec<(u32, f32)>> {
    let mut stream = engine.generate(request)?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_next().expect("a Finished event") {
            Ok(Event::Token(t)) => out.push((t.id, t.logprob)),
            Ok(Event::Finished(_)) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn a_merge_runs_as_an_adapter_of_its_own_merged_once_and_kept() {
    // PEFT's linear merge, saved as an adapter folder: the engine's merge must generate what it generates.
    let reference = candle_core::safetensors::load(merge_fixture("reference.safetensors"), &Device::Cpu).unwrap();
    let peft = tempfile::tempdir().unwrap();
    let peft_linear: HashMap<String, Tensor> = reference
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("linear/").filter(|k| *k != "logits").map(|k| (k.to_string(), t.clone())))
        .collect();
    candle_core::safetensors::save(&peft_linear, peft.path().join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        peft.path().join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":8,"lora_alpha":8,"target_modules":["q_proj","k_proj","v_proj"]}"#,
    )
    .unwrap();
    let mut cfg = engine_config();
    cfg.catalog.folders.insert(AdapterId::new("peft_linear").unwrap(), peft.path().to_path_buf());
    let engine = Engine::spawn(cfg).unwrap();
    let linear = || merged(&["qv_r8", "qkv_r8"], &[0.7, 0.5], MergeStrategy::Linear, 1.0);

    let first = tokens(&engine, request(None, Some(linear()))).unwrap();
    let peft_run = tokens(&engine, request(Some("peft_linear"), None)).unwrap();
    assert_eq!(ids(&first), ids(&peft_run), "PEFT's merge generates the same");
    assert!(max_gap(&first, &peft_run) < 1e-4, "{first:?} {peft_run:?}");
    let loads = EngineStats::get(&engine.stats().adapter_loads);
    assert_eq!(first, tokens(&engine, request(None, Some(linear()))).unwrap());
    assert_eq!(EngineStats::get(&engine.stats().adapter_loads), loads, "the same merge is resident: not merged again");
    let resident = engine.stats().adapter_activity().resident;
    assert!(resident.iter().any(|id| id.starts_with("merged:")), "the merge is resident under its id: {resident:?}");
    assert!(!resident.iter().any(|id| id == "qv_r8"), "its parts are not: {resident:?}");

    // Another merge of the same adapters is another adapter.
    let ties = merged(&["qv_r8", "qkv_r8"], &[1.0, 1.0], MergeStrategy::Ties, 0.3);
    let ties = tokens(&engine, request(None, Some(ties))).unwrap();
    assert!(max_gap(&ties, &first) > 1e-3, "{ties:?} {first:?}");
    assert_eq!(EngineStats::get(&engine.stats().adapter_loads), loads + 1);
    let plain = tokens(&engine, request(Some("qv_r8"), None)).unwrap();
    assert!(max_gap(&plain, &first) > 1e-3, "the merge is not its first part");

    // DARE's masks are seeded by the merge: another engine makes the same merge, and other parameters another.
    let dare = |density| merged(&["qv_r8", "qkv_r8", "ov_r8"], &[0.7, 1.0, 0.5], MergeStrategy::DareTies, density);
    let here = tokens(&engine, request(None, Some(dare(0.5)))).unwrap();
    let there = tokens(&Engine::spawn(engine_config()).unwrap(), request(None, Some(dare(0.5)))).unwrap();
    assert_eq!(here, there, "the same DARE merge in another engine");
    assert!(max_gap(&here, &tokens(&engine, request(None, Some(dare(0.6)))).unwrap()) > 1e-3);
}

#[test]
fn idle_merges_are_evicted_before_adapters() {
    let mut cfg = engine_config();
    cfg.limits = ResidencyLimits { max_adapters: 2, ..ResidencyLimits::default() };
    let engine = Engine::spawn(cfg).unwrap();
    tokens(&engine, request(Some("qv_r8"), None)).unwrap();
    for w in [0.1, 0.2, 0.3] {
        tokens(&engine, request(None, Some(merged(&["qkv_r8"], &[w], MergeStrategy::Linear, 1.0)))).unwrap();
    }
    // qv_r8 is the least recently used, but each new merge displaced the merge before it.
    let resident = engine.stats().adapter_activity().resident;
    assert_eq!(resident.len(), 2, "{resident:?}");
    assert!(resident.iter().any(|id| id == "qv_r8"), "{resident:?}");
}

fn ids(run: &[(u32, f32)]) -> Vec<u32> {
    run.iter().map(|t| t.0).collect()
}

/// The largest difference between two runs' log-probabilities, token by token.
fn max_gap(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x.1 - y.1).abs()).fold(0.0, f32::max)
}

#[test]
fn a_merge_that_cannot_be_made_fails_its_own_request_saying_why() {
    let engine = Engine::spawn(engine_config()).unwrap();
    let invalid = |r: GenerateRequest| match engine.generate(r) {
        Err(Error::Invalid { field: Field::MergedAdapters, reason }) => reason,
        other => panic!("expected an invalid merged_adapters, got {:?}", other.map(|_| ())),
    };
    let linear = merged(&["qv_r8", "qkv_r8"], &[1.0, 1.0], MergeStrategy::Linear, 1.0);
    assert!(invalid(request(Some("qv_r8"), Some(linear.clone()))).contains("cannot be set with an adapter"));
    let short = MergedAdapters { weights: vec![1.0], ..linear.clone() };
    assert_eq!(invalid(request(None, Some(short))), "has 1 weights for 2 adapters: one weight per adapter");
    let empty = MergedAdapters { ids: vec![], weights: vec![], ..linear.clone() };
    assert!(invalid(request(None, Some(empty))).starts_with("must name 1 to 16 adapters"));
    let nan = MergedAdapters { weights: vec![1.0, f64::NAN], ..linear.clone() };
    assert!(invalid(request(None, Some(nan))).starts_with("weights must be between"));
    let dense = merged(&["qv_r8", "qkv_r8"], &[1.0, 1.0], MergeStrategy::Ties, 0.0);
    assert_eq!(invalid(request(None, Some(dense))), "density must be > 0 and <= 1, got 0");
    let unknown = merged(&["qv_r8", "nope"], &[1.0, 1.0], MergeStrategy::Linear, 1.0);
    assert!(
        matches!(engine.generate(request(None, Some(unknown))), Err(Error::UnknownAdapter(id)) if id.as_str() == "nope")
    );

    // Ranks that differ are found when the parts are read: the request fails, naming both, and others still run.
    let ranks = merged(&["qv_r8", "all_r4"], &[1.0, 1.0], MergeStrategy::Linear, 1.0);
    let err = tokens(&engine, request(None, Some(ranks))).unwrap_err().to_string();
    assert!(err.contains("qv_r8 has rank 8 and all_r4 rank 4"), "{err}");
    assert!(err.starts_with("adapter merged:"), "{err}");
    // Even when they share no module (as PEFT, which refuses adapters of different `r`).
    let disjoint = merged(&["qv_r8", "mlp_r2"], &[1.0, 1.0], MergeStrategy::Linear, 1.0);
    let err = tokens(&engine, request(None, Some(disjoint))).unwrap_err().to_string();
    assert!(err.contains("qv_r8 has rank 8 and mlp_r2 rank 2"), "{err}");
    assert_eq!(tokens(&engine, request(None, Some(linear))).unwrap().len(), 10);
}
