//! Tokenizer behaviour on the tiny fixtures' byte-level BPE: streaming never splits a UTF-8 character, and the chat
//! template from tokenizer_config.json renders.

mod common;

use common::fixture;
use engine::{ChatMessage, TokenStream, Tokenizer};

#[test]
fn streaming_pieces_are_whole_characters_and_add_up() {
    let tok = Tokenizer::for_model(&fixture("tiny-llama/base")).unwrap();
    let text = "Zürich café 🙂 naïve — 東京";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() > text.chars().count() / 2, "byte-level BPE splits these characters over tokens");
    let mut stream = TokenStream::new();
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(p) = stream.push(&tok, id).unwrap() {
            pieces.push(p);
        }
    }
    pieces.extend(stream.flush(&tok).unwrap());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), tok.decode(&ids, false).unwrap());
    assert_eq!(pieces.concat(), text);
}

#[test]
fn chat_template_from_tokenizer_config() {
    let tok = Tokenizer::for_model(&fixture("tiny-llama/base")).unwrap();
    assert!(tok.has_chat_template());
    let msgs = [
        ChatMessage { role: "system".into(), content: "Be brief.".into() },
        ChatMessage { role: "user".into(), content: "Hi!".into() },
    ];
    let with = tok.apply_chat_template(&msgs, true).unwrap();
    let without = tok.apply_chat_template(&msgs, false).unwrap();
    assert!(with.contains("Be brief.") && with.contains("Hi!"), "{with}");
    assert!(with.len() > without.len() && with.starts_with(&without), "{with:?} vs {without:?}");
}
