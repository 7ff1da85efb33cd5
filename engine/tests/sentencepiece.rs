//! A GGUF's own SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`, as every Mistral-7B and Llama-2 GGUF
//! stores it) against transformers: Mistral-7B-v0.1's `tokenizer.model` in a tiny random-weight GGUF laid out as
//! llama.cpp's converter writes it. Token ids equal transformers' LlamaTokenizer on accents, digits, whitespace
//! runs, emoji, byte fallback and special-token text; decoding gives sentencepiece's text back; the chat template
//! renders as transformers renders it; and the model generates through the engine with its text streamed whole.
//! Needs the fixture: `make spm-fixture` makes it under data/fixtures/mistral-spm (or set LORALAND_SPM_FIXTURE).

mod common;

use common::spm_fixture;
use engine::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Prompt, SamplingParams, Tokenizer};
use serde_json::Value;

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(spm_fixture().join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn token_ids_and_text_equal_transformers_and_sentencepiece() {
    let tok = Tokenizer::for_model(&spm_fixture().join("tiny.gguf")).unwrap();
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut wrong = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != want {
            wrong.push(format!("{text:?}\n  transformers {want:?}\n  ours         {got:?}"));
        }
        let decoded = tok.decode(&want, true).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            wrong.push(format!("decode of {text:?}: {decoded:?}, sentencepiece {:?}", case["decoded"]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // What the model's GGUF says about its special tokens.
    assert_eq!(tok.eos_token_id(), Some(2));
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2), "<unk>, <s>, </s>");
    assert!(!tok.is_special(13), "<0x0A> is a byte, not special");
}

#[test]
fn the_chat_template_renders_and_tokenizes_as_transformers_does() {
    let tok = Tokenizer::for_model(&spm_fixture().join("tiny.gguf")).unwrap();
    let chat = &reference()["chat"];
    let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    assert_eq!(tok.apply_chat_template(&messages, false).unwrap(), chat["text"].as_str().unwrap());
    // The server's path: content apart from the template, no BOS added (the template writes it).
    let parts = tok.chat_parts(&messages, false).unwrap();
    assert_eq!(tok.encode_parts(&parts, false).unwrap(), ids(&chat["ids"]));
    // Roles out of order are the template's own error.
    let bad = [ChatMessage { role: "assistant".into(), content: "hi".into() }];
    let err = tok.apply_chat_template(&bad, false).unwrap_err().to_string();
    assert!(err.contains("conversation roles must alternate"), "{err}");
}

#[test]
fn the_tiny_mistral_gguf_generates_through_the_engine_with_its_text_streamed_whole() {
    let mut cfg = EngineConfig::new(spm_fixture().join("tiny.gguf"));
    cfg.max_new_tokens = 24;
    let engine = Engine::spawn(cfg).unwrap();
    let prompt = "[INST] Schreib ein Gedicht über Zürich 🏔️ [/INST]";
    let mut stream = engine
        .generate(GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            sampling: SamplingParams { temperature: Some(1.0), seed: 7, ..SamplingParams::greedy() },
            max_new_tokens: 24,
            ..Default::default()
        })
        .unwrap();
    let (mut ids, mut streamed) = (Vec::new(), String::new());
    let finished = loop {
        match stream.blocking_next().unwrap().unwrap() {
            Event::Token(t) => {
                ids.push(t.id);
                streamed.push_str(&t.text);
            }
            Event::Finished(f) => break f,
        }
    };
    assert_eq!(finished.prompt_tokens, engine.tokenizer().encode(prompt, true).unwrap().len());
    assert!(!ids.is_empty());
    // The pieces add up to the whole decoding: no character cut, no space lost at a piece's edge.
    let whole = engine.tokenizer().decode(&ids, true).unwrap();
    assert_eq!(streamed, whole);
    assert_eq!(finished.text, whole);
}
