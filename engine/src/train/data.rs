//! Training data: prompt/completion pairs (JSONL `{"prompt": ..., "completion": ...}`), tokenized as the engine
//! will see them at inference (the prompt as raw text with BOS if the model uses one, then the completion and EOS),
//! and packed into right-padded batches whose loss covers only the completion tokens.

use crate::{Error, Result, Tokenizer};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One training example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The filled prompt template.
    pub prompt: String,
    /// The answer the adapter should give.
    pub completion: String,
}

/// Reads a JSONL file of [`Example`]s; a bad line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::Training(format!(
                    "{} line {}: expected {{\"prompt\", \"completion\"}}: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// An example as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Prompt then completion (then EOS).
    pub ids: Vec<u32>,
    /// How many of `ids` are prompt.
    pub prompt_len: usize,
}

/// Tokenizes `examples`; those longer than `max_len` tokens are skipped and counted.
pub fn encode(examples: &[Example], tokenizer: &Tokenizer, max_len: usize) -> Result<(Vec<Encoded>, usize)> {
    let eos = tokenizer.eos_token_id();
    let mut out = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for ex in examples {
        let mut ids = tokenizer.encode(&ex.prompt, true)?;
        let prompt_len = ids.len();
        ids.extend(tokenizer.encode(&ex.completion, false)?);
        ids.extend(eos);
        if prompt_len == 0 || ids.len() == prompt_len || ids.len() > max_len {
            skipped += 1;
            continue;
        }
        out.push(Encoded { ids, prompt_len });
    }
    Ok((out, skipped))
}

/// A padded batch ready for [`super::FrozenModel::loss`].
#[derive(Debug)]
pub struct Batch {
    /// `[batch, len]` token ids, right-padded.
    pub ids: Tensor,
    /// Rows of the flattened `[batch * len]` positions whose next token is a completion token.
    pub loss_rows: Tensor,
    /// That next token, for each loss row.
    pub targets: Tensor,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

impl Batch {
    /// Packs `items` (padded with `pad`, which attention never sees thanks to the causal mask).
    pub fn new(items: &[&Encoded], pad: u32, device: &Device) -> Result<Self> {
        let len = items.iter().map(|e| e.ids.len()).max().ok_or_else(|| Error::Training("empty batch".into()))?;
        let mut ids = Vec::with_capacity(items.len() * len);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (i, e) in items.iter().enumerate() {
            ids.extend_from_slice(&e.ids);
            ids.extend(std::iter::repeat_n(pad, len - e.ids.len()));
            for p in e.prompt_len..e.ids.len() {
                rows.push((i * len + p - 1) as u32);
                targets.push(e.ids[p]);
            }
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (items.len(), len), device)?,
            tokens: items.iter().map(|e| e.ids.len()).sum(),
            loss_rows: Tensor::new(rows, device)?,
            targets: Tensor::new(targets, device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_targets_are_the_completion_tokens_only() {
        let a = Encoded { ids: vec![1, 2, 3, 4], prompt_len: 2 };
        let b = Encoded { ids: vec![5, 6, 7], prompt_len: 2 };
        let batch = Batch::new(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.ids.to_vec2::<u32>().unwrap(), [[1, 2, 3, 4], [5, 6, 7, 0]]);
        // Row 1 (token 2) predicts 3, row 2 predicts 4; in the second sequence row 4 + 1 predicts 7.
        assert_eq!(batch.loss_rows.to_vec1::<u32>().unwrap(), [1, 2, 5]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), [3, 4, 7]);
        assert_eq!(batch.tokens, 7);
    }

    #[test]
    fn bad_jsonl_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"prompt\":\"a\",\"completion\":\"b\"}\n\n{\"prompt\":\"a\"}\n").unwrap();
        let err = read_jsonl(&p).unwrap_err().to_string();
        assert!(err.contains("d.jsonl line 3"), "{err}");
    }
}
