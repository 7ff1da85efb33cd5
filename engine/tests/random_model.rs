//! A model with random weights for a named architecture (what `loraland bench load --random-model` runs): the
//! engine builds it with a synthetic tokenizer, serves adapters written for its shape, and streams the requested
//! number of tokens (no EOS stops a benchmark stream early).

use engine::registry::ResidencyLimits;
use engine::{
    AdapterId, Catalog, Engine, EngineConfig, Event, FinishReason, GenerateRequest, Model, ModelConfig, Module, Prompt,
    RandomWeights, SamplingParams, Tokenizer,
};

#[test]
fn presets_are_mistral_shaped_and_unknown_names_are_refused() {
    let big = ModelConfig::preset("mistral-7b").unwrap();
    assert_eq!((big.hidden_size, big.num_hidden_layers, big.num_key_value_heads), (4096, 32, 8));
    assert_eq!(big.sliding_window, Some(4096));
    let err = ModelConfig::preset("gpt-5").unwrap_err().to_string();
    assert!(err.contains("unknown model preset") && err.contains("mistral-7b"), "{err}");
}

#[test]
fn decode_weight_bytes_counts_every_projection_and_the_head() {
    let cfg = ModelConfig::preset("mistral-tiny").unwrap();
    let model = Model::random(cfg.clone(), &engine::LoadOptions::default(), 0).unwrap();
    let per_layer: usize = Module::ALL
        .iter()
        .map(|&m| {
            let (i, o) = cfg.module_shape(m);
            i * o
        })
        .sum::<usize>()
        + 2 * cfg.hidden_size;
    let expected = 4 * (cfg.num_hidden_layers * per_layer + cfg.hidden_size + cfg.vocab_size * cfg.hidden_size);
    assert_eq!(model.decode_weight_bytes(), expected);
}

#[test]
fn synthetic_tokenizer_round_trips_ids() {
    let tok = Tokenizer::synthetic(100).unwrap();
    assert_eq!(tok.vocab_size(), 100);
    assert_eq!(tok.encode("t5 t17 t99", false).unwrap(), vec![5, 17, 99]);
    assert_eq!(tok.decode(&[5, 17], false).unwrap(), "t5 t17");
}

#[test]
fn engine_serves_a_random_model_with_adapters() {
    let config = ModelConfig::preset("mistral-tiny").unwrap();
    let dir = tempfile::tempdir().unwrap();
    engine::adapter::write_random_peft(
        &dir.path().join("a0"),
        &config,
        8,
        &[Module::Q, Module::V],
        1,
        candle_core::DType::F32,
    )
    .unwrap();
    let mut cfg = EngineConfig::new("random mistral-tiny");
    cfg.random_weights = Some(RandomWeights { config: config.clone(), seed: 0 });
    cfg.catalog = Catalog { adapters_dir: Some(dir.path().to_path_buf()), allow_hub: false, ..Default::default() };
    cfg.limits = ResidencyLimits { max_adapters: 2, ..ResidencyLimits::default() };
    let engine = Engine::spawn(cfg).unwrap();
    assert_eq!(engine.model_info().name, "random mistral-tiny");
    assert_eq!(engine.model_info().vocab_size, 32_000);
    for adapter in [None, Some(AdapterId::new("a0").unwrap())] {
        let req = GenerateRequest {
            prompt: Prompt::Tokens((100..140).collect()),
            adapter,
            sampling: SamplingParams::greedy(),
            max_new_tokens: 12,
            stop: vec![],
            ..GenerateRequest::default()
        };
        let mut stream = engine.generate(req).unwrap();
        let mut tokens = 0;
        loop {
            match stream.blocking_next().expect("a final event").unwrap() {
                Event::Token(t) => {
                    assert!(t.text.starts_with('t') || t.text.starts_with(" t"), "{:?}", t.text);
                    tokens += 1;
                }
                Event::Finished(f) => {
                    assert_eq!(f.reason, FinishReason::Length);
                    break;
                }
            }
        }
        assert_eq!(tokens, 12);
    }
}
