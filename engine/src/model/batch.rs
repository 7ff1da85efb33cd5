//! What a forward pass takes and gives: each sequence's part of the batch ([`SeqInput`]) and which logits come back
//! ([`Logits`]).

use crate::KvCache;

/// One sequence's part of a batch: the new tokens, its cache (holding everything before them) and its adapter.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// Tokens to feed (the whole prompt, a chunk of it, or one decoded token).
    pub tokens: &'a [u32],
    /// The sequence's KV cache; its length is the position of `tokens[0]`.
    pub cache: &'a mut KvCache,
    /// Adapter slot in the [`AdapterBank`], `None` for the base model.
    pub adapter: Option<usize>,
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// One row per sequence: the logits after its last token (`[seqs, vocab]`).
    Last,
    /// One row per token of the batch, sequences one after the other (`[tokens, vocab]`).
    All,
}
