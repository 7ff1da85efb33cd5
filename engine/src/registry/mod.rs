//! The adapter registry: where adapters come from (the catalog of sources), loading them off the batching thread,
//! and which stay resident (least-recently-used eviction within count and byte limits, pinning, rank limit).

mod host_cache;
mod id;
mod loader;
mod resident;

pub use host_cache::HostCache;
pub use id::{AdapterId, InvalidAdapterId, MAX_ID_LEN};
pub(crate) use loader::{LoadDone, Loader};
pub use resident::{Residency, ResidencyLimits};

use crate::adapter::{AdapterTarget, LoraAdapter};
use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Where an adapter's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterSource {
    /// A PEFT folder on disk.
    Local(PathBuf),
    /// A Hugging Face hub repository (`owner/name`), downloaded into the hub cache on first use.
    Hub {
        /// The repository id.
        repo: String,
    },
}

/// Maps adapter ids to sources: `<adapters_dir>/<id>` when that folder exists; with `hub` allowed, an
/// `owner/name` id not found locally is fetched from the hub.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Root of the local adapter folders.
    pub adapters_dir: Option<PathBuf>,
    /// Whether ids that are not local may be fetched from the Hugging Face hub.
    pub allow_hub: bool,
}

impl Catalog {
    /// The source of `id`, or [`Error::UnknownAdapter`].
    pub fn resolve(&self, id: &AdapterId) -> Result<AdapterSource> {
        if let Some(dir) = &self.adapters_dir {
            let path = dir.join(id.as_str());
            if path.is_dir() {
                return Ok(AdapterSource::Local(path));
            }
        }
        if self.allow_hub && id.as_str().contains('/') {
            return Ok(AdapterSource::Hub { repo: id.as_str().to_string() });
        }
        Err(Error::UnknownAdapter(id.clone()))
    }

    /// Every adapter id found in the local folder (sub-folders holding an `adapter_config.json`, one or two
    /// levels deep), sorted.
    pub fn list_local(&self) -> Vec<AdapterId> {
        let Some(dir) = &self.adapters_dir else { return Vec::new() };
        let mut ids = Vec::new();
        let entries = |p: &std::path::Path| std::fs::read_dir(p).into_iter().flatten().flatten();
        for e in entries(dir) {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().join("adapter_config.json").is_file() {
                ids.extend(AdapterId::new(&name).ok());
            } else if e.path().is_dir() {
                for inner in entries(&e.path()) {
                    if inner.path().join("adapter_config.json").is_file() {
                        let full = format!("{name}/{}", inner.file_name().to_string_lossy());
                        ids.extend(AdapterId::new(&full).ok());
                    }
                }
            }
        }
        ids.sort();
        ids
    }
}

/// Loads an adapter from its source (blocking: disk or network).
pub fn load(source: &AdapterSource, target: &AdapterTarget) -> Result<Arc<LoraAdapter>> {
    let dir = match source {
        AdapterSource::Local(dir) => dir.clone(),
        AdapterSource::Hub { repo } => fetch_from_hub(repo)?,
    };
    LoraAdapter::load(&dir, target).map(Arc::new)
}

/// Downloads `adapter_config.json` and `adapter_model.safetensors` of `repo` with hf-hub (honours `HF_HOME`,
/// `HF_ENDPOINT` and `HF_TOKEN`) and returns the local folder.
fn fetch_from_hub(repo: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| Error::AdapterFetch { repo: repo.to_string(), reason: e.to_string() })?;
    let r = api.model(repo.to_string());
    let config = r
        .get("adapter_config.json")
        .map_err(|e| Error::AdapterFetch { repo: repo.to_string(), reason: e.to_string() })?;
    r.get("adapter_model.safetensors")
        .map_err(|e| Error::AdapterFetch { repo: repo.to_string(), reason: e.to_string() })?;
    Ok(config.parent().map(PathBuf::from).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_local_folders_and_refuses_unknown_ids() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama/adapters");
        let cat = Catalog { adapters_dir: Some(fixtures.clone()), allow_hub: false };
        let id = AdapterId::new("qv_r8").unwrap();
        assert_eq!(cat.resolve(&id).unwrap(), AdapterSource::Local(fixtures.join("qv_r8")));
        let missing = AdapterId::new("nope").unwrap();
        assert!(matches!(cat.resolve(&missing), Err(Error::UnknownAdapter(_))));
        let hub_id = AdapterId::new("predibase/magicoder").unwrap();
        assert!(cat.resolve(&hub_id).is_err(), "hub not allowed");
        let hub = Catalog { allow_hub: true, ..cat.clone() };
        assert_eq!(hub.resolve(&hub_id).unwrap(), AdapterSource::Hub { repo: "predibase/magicoder".into() });
        let ids: Vec<String> = cat.list_local().iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, ["all_r4", "attn_r16_rslora", "mlp_r2", "qv_r8"]);
    }

    #[test]
    fn hub_fetch_without_network_is_a_clear_error() {
        // No model hub is reachable from here (and HF_ENDPOINT points nowhere): the error names the repo.
        std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HOME", home.path());
        let err = fetch_from_hub("predibase/magicoder").unwrap_err();
        assert!(matches!(err, Error::AdapterFetch { ref repo, .. } if repo == "predibase/magicoder"), "{err:?}");
        assert!(err.to_string().starts_with("cannot fetch adapter predibase/magicoder from the hub"), "{err}");
    }
}
