//! Generating text for a batch of requests, each with its own adapter and sampling parameters, in lock-step: one
//! mixed prefill, then one mixed decode step per token for all unfinished requests. Used by `loraland generate` and
//! the tests; the continuous batcher schedules the same model steps.

use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{TokenStream, Tokenizer};
use crate::{AdapterBank, Logits, Model, Result, SeqInput};
use serde::Serialize;

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop sequence appeared in the text.
    StopSequence,
}

impl FinishReason {
    /// The snake_case name (as serialized): `length`, `eos`, `stop_sequence`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Eos => "eos",
            Self::StopSequence => "stop_sequence",
        }
    }
}

/// One request of a batch.
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Adapter slot in the bank, `None` for the base model.
    pub adapter: Option<usize>,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Stop when the generated text contains one of these (the stop text itself is cut off).
    pub stop: Vec<String>,
}

/// The result of one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenOutput {
    /// Generated token ids (the EOS token included when it ended the sequence).
    pub tokens: Vec<u32>,
    /// Generated text, special tokens removed, cut at a stop sequence.
    pub text: String,
    /// Log-probability of each generated token.
    pub logprobs: Vec<f32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
}

/// The end-of-sequence tokens of a model: its config's and its tokenizer's.
pub fn eos_tokens(model: &Model, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut eos = model.config().eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    eos.sort_unstable();
    eos.dedup();
    eos
}

struct Running {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    text: String,
    stream: TokenStream,
    sampler: Sampler,
    finish: Option<FinishReason>,
}

/// Runs `requests` to completion as one batch.
pub fn generate_batch(
    model: &Model,
    tokenizer: &Tokenizer,
    bank: &AdapterBank,
    requests: &[GenRequest],
) -> Result<Vec<GenOutput>> {
    let eos = eos_tokens(model, tokenizer);
    let mut caches: Vec<_> = requests.iter().map(|_| model.new_cache()).collect();
    let mut state: Vec<Running> = requests
        .iter()
        .map(|r| Running {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            text: String::new(),
            stream: TokenStream::new(),
            sampler: Sampler::new(r.sampling.clone()),
            finish: (r.max_new_tokens == 0).then_some(FinishReason::Length),
        })
        .collect();
    let mut feed: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
    loop {
        let active: Vec<usize> = (0..requests.len()).filter(|&i| state[i].finish.is_none()).collect();
        if active.is_empty() {
            break;
        }
        let logits = {
            let mut seqs: Vec<SeqInput<'_>> = Vec::with_capacity(active.len());
            let mut caches_iter: Vec<Option<&mut crate::KvCache>> = caches.iter_mut().map(Some).collect();
            for &i in &active {
                let cache = caches_iter[i].take().expect("each sequence appears once");
                seqs.push(SeqInput { tokens: &feed[i], cache, adapter: requests[i].adapter });
            }
            model.forward(&mut seqs, bank, Logits::Last)?
        };
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        for (row, &i) in rows.iter().zip(&active) {
            let req = &requests[i];
            let st = &mut state[i];
            let mut history = req.prompt.clone();
            history.extend_from_slice(&st.tokens);
            let next = st.sampler.sample(row, &history);
            st.tokens.push(next.token);
            st.logprobs.push(next.logprob);
            feed[i] = vec![next.token];
            if eos.contains(&next.token) {
                st.finish = Some(FinishReason::Eos);
                continue;
            }
            if !tokenizer.is_special(next.token) {
                if let Some(piece) = st.stream.push(tokenizer, next.token)? {
                    st.text.push_str(&piece);
                }
            }
            if let Some(pos) = req.stop.iter().filter_map(|s| st.text.find(s.as_str())).min() {
                st.text.truncate(pos);
                st.finish = Some(FinishReason::StopSequence);
            } else if st.tokens.len() >= req.max_new_tokens {
                st.finish = Some(FinishReason::Length);
            }
        }
    }
    state
        .into_iter()
        .map(|mut st| {
            if st.finish != Some(FinishReason::StopSequence) {
                if let Some(rest) = st.stream.flush(tokenizer)? {
                    st.text.push_str(&rest);
                }
            }
            Ok(GenOutput {
                tokens: st.tokens,
                text: st.text,
                logprobs: st.logprobs,
                finish_reason: st.finish.unwrap_or(FinishReason::Length),
            })
        })
        .collect()
}
