//! Merged adapters as a source: the adapters a request asks to merge, and the id the merge is known by, so that it
//! is made once, stays resident and is evicted like any other adapter, merges first (see [`crate::adapter::merge`]).

use super::{AdapterId, AdapterSource, HubLimits};
use crate::adapter::merge::{merge, seeded_masks, MergeInput, MergeParams};
use crate::adapter::{read_peft, AdapterTarget, LoraAdapter};
use crate::Result;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The adapters of a merge, resolved to their sources, with their weights and how to merge them.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedSource {
    /// The adapters, in the request's order.
    parts: Vec<(AdapterId, AdapterSource)>,
    /// One weight per adapter.
    weights: Vec<f64>,
    /// Strategy, density and sign election, normalized.
    params: MergeParams,
}

// Weights and density are checked finite before a source is made.
impl Eq for MergedSource {}

impl MergedSource {
    /// A merge of `parts` with `weights`, its parameters normalized (see [`MergeParams::normalized`]).
    pub fn new(parts: Vec<(AdapterId, AdapterSource)>, weights: Vec<f64>, params: MergeParams) -> Self {
        let params = params.normalized(parts.len());
        Self { parts, weights, params }
    }

    /// The merge's id, `merged:` and 16 hex digits of a SHA-256 over the parts (ids and sources), weights and
    /// parameters: the same merge has the same id in every process, and is kept resident under it. No folder or
    /// hub repository can have such an id (see [`AdapterId::merge`]).
    pub fn id(&self) -> AdapterId {
        id_of(&self.digest())
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        // Every field length-prefixed, so that no two merges write the same bytes.
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        for ((id, source), w) in self.parts.iter().zip(&self.weights) {
            field(id.as_str().as_bytes());
            match source {
                AdapterSource::Local(dir) => field(format!("local:{}", dir.display()).as_bytes()),
                AdapterSource::Hub { repo } => field(format!("hub:{repo}").as_bytes()),
                AdapterSource::Merged(m) => field(&m.digest()),
            }
            field(&w.to_bits().to_le_bytes());
        }
        field(self.params.strategy.name().as_bytes());
        field(&self.params.density.to_bits().to_le_bytes());
        field(self.params.majority_sign.name().as_bytes());
        h.finalize().into()
    }

    /// Whether any part comes from the hub (its load then waits behind downloads, not local reads).
    pub fn uses_hub(&self) -> bool {
        self.parts.iter().any(|(_, s)| matches!(s, AdapterSource::Hub { .. }))
    }

    /// Reads every part and merges them for `target` (blocking). DARE's masks are seeded by the merge's digest.
    pub(crate) fn load(&self, target: &AdapterTarget, hub: &HubLimits) -> Result<LoraAdapter> {
        let mut read = Vec::with_capacity(self.parts.len());
        for (id, source) in &self.parts {
            let dir = super::folder(source, hub)?;
            let (config, tensors) = read_peft(&dir).map_err(|e| super::load_failure(id, e, Some(&dir)))?;
            read.push((id, config, tensors));
        }
        let inputs: Vec<MergeInput<'_>> = read
            .iter()
            .zip(&self.weights)
            .map(|((id, config, tensors), &weight)| MergeInput { name: id.as_str(), config, tensors, weight })
            .collect();
        let digest = self.digest();
        let seed = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let mut masks = seeded_masks(seed, self.params.density);
        let (config, tensors) = merge(&inputs, &self.params, &target.config, &mut masks)?;
        LoraAdapter::from_tensors(config, tensors, Path::new(id_of(&digest).as_str()), target)
    }
}

/// A merge's id from its digest: 16 hex digits of it.
fn id_of(digest: &[u8; 32]) -> AdapterId {
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    AdapterId::merge(&hex)
}
