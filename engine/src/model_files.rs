//! Finding a model on disk: a GGUF file, or a Hugging Face folder (`config.json` + safetensors).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// One `.gguf` file holding config, tokenizer and (possibly quantized) weights.
    Gguf,
    /// A Hugging Face folder: `config.json`, `model.safetensors` or shards with `model.safetensors.index.json`.
    HfFolder,
}

/// A located model: its path, format and display name.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The GGUF file or the folder.
    pub path: PathBuf,
    /// How the weights are stored.
    pub format: ModelFormat,
    /// A human-readable name (GGUF `general.name`, or the folder / file name).
    pub name: String,
}

impl ModelFiles {
    /// Checks that `path` holds a model this engine can read, and reads its name. Reads only headers.
    pub fn locate(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::ModelNotFound(path.to_path_buf()));
        }
        if path.is_dir() {
            return Self::locate_folder(path);
        }
        Self::locate_gguf(path)
    }

    fn locate_folder(path: &Path) -> Result<Self> {
        let unsupported = |reason: &str| Error::UnsupportedModel { path: path.to_path_buf(), reason: reason.into() };
        if !path.join("config.json").is_file() {
            return Err(unsupported("not a Hugging Face model folder (no config.json)"));
        }
        let has_weights =
            path.join("model.safetensors").is_file() || path.join("model.safetensors.index.json").is_file();
        if !has_weights {
            return Err(unsupported("no model.safetensors or model.safetensors.index.json"));
        }
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self { path: path.to_path_buf(), format: ModelFormat::HfFolder, name })
    }

    fn locate_gguf(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| {
            Error::UnsupportedModel { path: path.to_path_buf(), reason: format!("not a readable GGUF file: {e}") }
        })?;
        if !content.metadata.contains_key("general.architecture") {
            return Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                reason: "GGUF has no general.architecture".into(),
            });
        }
        // The file name says more than `general.name` does (it names the quantization too).
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), format: ModelFormat::Gguf, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_model_not_found() {
        let err = ModelFiles::locate(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, Error::ModelNotFound(_)));
        assert_eq!(err.to_string(), "model not found at /nonexistent/model.gguf");
    }

    #[test]
    fn garbage_file_is_not_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"definitely not gguf").unwrap();
        let err = ModelFiles::locate(&p).unwrap_err();
        assert!(err.to_string().contains("not a readable GGUF file"), "{err}");
    }

    #[test]
    fn fixture_folder_is_found() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama/base");
        let files = ModelFiles::locate(&p).unwrap();
        assert_eq!(files.format, ModelFormat::HfFolder);
        assert_eq!(files.name, "base");
    }
}
