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
