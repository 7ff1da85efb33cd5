//! The adapter registry: where adapters come from (the catalog of sources), loading them off the batching thread,
//! and which stay resident (least-recently-used eviction within count and byte limits, pinning, rank limit).

mod host_cache;
mod id;
mod loader;
mod merged;
mod resident;

pub use host_cache::HostCache;
pub use id::{AdapterId, InvalidAdapterId, MAX_ID_LEN};
pub(crate) use loader::{LoadDone, Loaded, Loader};
pub use merged::MergedSource;
pub use resident::{Residency, ResidencyLimits};

use crate::adapter::{AdapterTarget, LoraAdapter};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Adapters merged into one (LoRAX's `merged_adapters`), each from a source of its own.
    Merged(Arc<MergedSource>),
}

/// Maps adapter ids to sources: a folder named for the id, else `<adapters_dir>/<id>` when that folder exists;
/// with `hub` allowed, an `owner/name` id not found locally is fetched from the hub.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Root of the local adapter folders.
    pub adapters_dir: Option<PathBuf>,
    /// Adapter folders anywhere on disk, under the id each is given (the command-line tools' `--adapter DIR`).
    pub folders: BTreeMap<AdapterId, PathBuf>,
    /// Folders of adapters made while the server runs, each under an id prefix: the id `<prefix>/<name>` is the
    /// folder `<dir>/<name>`, and nothing else (the web app's trained adapters are `trained/<job>`).
    pub namespaces: BTreeMap<String, PathBuf>,
    /// Whether ids that are not local may be fetched from the Hugging Face hub.
    pub allow_hub: bool,
}

impl Catalog {
    /// The source of `id`, or [`Error::UnknownAdapter`].
    pub fn resolve(&self, id: &AdapterId) -> Result<AdapterSource> {
        if let Some(dir) = self.folders.get(id) {
            return Ok(AdapterSource::Local(dir.clone()));
        }
        if let Some((prefix, name)) = id.as_str().split_once('/') {
            if let Some(root) = self.namespaces.get(prefix) {
                let path = root.join(name);
                return match path.join("adapter_config.json").is_file() {
                    true => Ok(AdapterSource::Local(path)),
                    false => Err(Error::UnknownAdapter(id.clone())),
                };
            }
        }
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

/// Limits on adapter downloads from the Hugging Face hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubLimits {
    /// Largest `adapter_model.safetensors` downloaded, in bytes: checked against the hub's file metadata before the
    /// download, and against the file once it is written.
    pub max_bytes: u64,
    /// Longest a download (metadata and files) may take.
    pub timeout: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self { max_bytes: 1 << 30, timeout: Duration::from_secs(120) }
    }
}

/// Loads adapter `id` from its source (blocking: disk or network). A failure is logged in full and answered as
/// [`Error::AdapterLoad`] naming the adapter by its id, not by the server's folders.
pub fn load(
    id: &AdapterId,
    source: &AdapterSource,
    target: &AdapterTarget,
    hub: &HubLimits,
) -> Result<Arc<LoraAdapter>> {
    let fail = |e: Error, dir: Option<&Path>| {
        tracing::warn!(adapter = %id, "adapter load failed: {e}");
        load_failure(id, e, dir)
    };
    if let AdapterSource::Merged(merged) = source {
        return merged.load(target, hub).map(Arc::new).map_err(|e| fail(e, None));
    }
    let dir = folder(source, hub).map_err(|e| fail(e, None))?;
    LoraAdapter::load(&dir, target).map(Arc::new).map_err(|e| fail(e, Some(&dir)))
}

/// [`Error::AdapterLoad`] for adapter `id`, read from `dir`: named by its id, not by the server's folders.
fn load_failure(id: &AdapterId, e: Error, dir: Option<&Path>) -> Error {
    let mut reason = e.to_string();
    if let Some(dir) = dir {
        reason = reason.replace(&dir.display().to_string(), id.as_str());
    }
    // An error that names its adapter already ("adapter qv_r8: ...") needs no second name.
    let reason = reason.strip_prefix(&format!("adapter {id}: ")).map(str::to_string).unwrap_or(reason);
    Error::AdapterLoad { id: id.clone(), reason }
}

/// The local folder of a local or hub adapter (downloading it from the hub if need be).
fn folder(source: &AdapterSource, hub: &HubLimits) -> Result<PathBuf> {
    match source {
        AdapterSource::Local(dir) => Ok(dir.clone()),
        AdapterSource::Hub { repo } => fetch_from_hub(repo, hub),
        AdapterSource::Merged(_) => Err(Error::AdapterMerge("a merge cannot be a part of another".into())),
    }
}

/// Downloads `adapter_config.json` and `adapter_model.safetensors` of `repo` with hf-hub (honours `HF_HOME`,
/// `HF_ENDPOINT` and `HF_TOKEN`) within `limits`, and returns the local folder.
fn fetch_from_hub(repo: &str, limits: &HubLimits) -> Result<PathBuf> {
    let fetch_err = |reason: String| Error::AdapterFetch { repo: repo.to_string(), reason };
    let api =
        hf_hub::api::sync::ApiBuilder::from_env().with_progress(false).build().map_err(|e| fetch_err(e.to_string()))?;
    let r = api.model(repo.to_string());
    // The weights' size, from the hub's file list, before anything is downloaded.
    let info: serde_json::Value = r
        .info_request()
        .query("blobs", "true")
        .timeout(limits.timeout)
        .call()
        .map_err(|e| fetch_err(e.to_string()))?
        .into_json()
        .map_err(|e| fetch_err(format!("unreadable file list: {e}")))?;
    let weights = "adapter_model.safetensors";
    let size = info["siblings"]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["rfilename"] == weights))
        .map(|f| f["lfs"]["size"].as_u64().or_else(|| f["size"].as_u64()))
        .ok_or_else(|| fetch_err(format!("the repository has no {weights}")))?;
    let too_big = |bytes: u64| {
        fetch_err(format!("{weights} is {bytes} bytes, more than the limit of {} bytes", limits.max_bytes))
    };
    if let Some(bytes) = size.filter(|&b| b > limits.max_bytes) {
        return Err(too_big(bytes));
    }
    // The files, within the time left: the download runs on a thread of its own and is given up at the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = r.get("adapter_config.json").and_then(|config| r.get(weights).map(|w| (config, w)));
        let _ = tx.send(got);
    });
    let (config, weights_path) = match rx.recv_timeout(limits.timeout) {
        Ok(got) => got.map_err(|e| fetch_err(e.to_string()))?,
        Err(_) => return Err(fetch_err(format!("the download did not finish within {} s", limits.timeout.as_secs()))),
    };
    let written = std::fs::metadata(&weights_path).map(|m| m.len()).unwrap_or(0);
    if written > limits.max_bytes {
        let _ = std::fs::remove_file(&weights_path);
        return Err(too_big(written));
    }
    Ok(config.parent().map(PathBuf::from).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_local_folders_and_refuses_unknown_ids() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama/adapters");
        let cat = Catalog { adapters_dir: Some(fixtures.clone()), allow_hub: false, ..Default::default() };
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
        // A folder named for an id comes first, wherever it is.
        let elsewhere = Catalog { folders: [(missing.clone(), fixtures.join("mlp_r2"))].into(), ..cat.clone() };
        assert_eq!(elsewhere.resolve(&missing).unwrap(), AdapterSource::Local(fixtures.join("mlp_r2")));

        // A namespace is its folder only: a missing name there is unknown, never a hub repo.
        let trained = Catalog {
            namespaces: [("trained".to_string(), fixtures.clone())].into(),
            allow_hub: true,
            ..Default::default()
        };
        let id = |s: &str| AdapterId::new(s).unwrap();
        assert_eq!(trained.resolve(&id("trained/qv_r8")).unwrap(), AdapterSource::Local(fixtures.join("qv_r8")));
        assert!(matches!(trained.resolve(&id("trained/nope")), Err(Error::UnknownAdapter(_))));
        assert_eq!(trained.resolve(&id("owner/nope")).unwrap(), AdapterSource::Hub { repo: "owner/nope".into() });
    }

    #[test]
    fn a_failed_load_names_the_adapter_by_its_id_not_the_servers_folders() {
        let dir = tempfile::tempdir().unwrap();
        let id = AdapterId::new("broken").unwrap();
        let target = crate::adapter::tiny_test_target();
        let load =
            |id: &AdapterId| load(id, &AdapterSource::Local(dir.path().join("broken")), &target, &Default::default());
        let err = load(&id).unwrap_err();
        assert_eq!(err.to_string(), "adapter broken failed to load: adapter_config.json is missing");
        std::fs::create_dir(dir.path().join("broken")).unwrap();
        std::fs::write(dir.path().join("broken/adapter_config.json"), "{not json").unwrap();
        let err = load(&id).unwrap_err().to_string();
        assert!(err.starts_with("adapter broken failed to load: "), "{err}");
        assert!(!err.contains(&dir.path().display().to_string()), "no server path: {err}");
    }

    #[test]
    fn hub_fetch_without_network_is_a_clear_error() {
        // No model hub is reachable from here (and HF_ENDPOINT points nowhere): the error names the repo.
        std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HOME", home.path());
        let err = fetch_from_hub("predibase/magicoder", &HubLimits::default()).unwrap_err();
        assert!(matches!(err, Error::AdapterFetch { ref repo, .. } if repo == "predibase/magicoder"), "{err:?}");
        assert!(err.to_string().starts_with("cannot fetch adapter predibase/magicoder from the hub"), "{err}");
    }
}
