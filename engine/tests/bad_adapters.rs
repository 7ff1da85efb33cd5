//! Broken adapters give a typed error that names the file, tensor or field at fault, and never a panic.

mod common;

use common::fixture;
use engine::adapter::LoraAdapter;
use engine::{Error, LoadOptions, Model};
use std::path::{Path, PathBuf};

fn model(name: &str) -> Model {
    Model::load(&fixture(&format!("{name}/base")), &LoadOptions::default()).unwrap()
}

/// A writable copy of a fixture adapter.
fn copy_adapter(src: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    std::fs::create_dir(&dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture(src).join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("adapter_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

fn load(dir: &Path, m: &Model) -> Error {
    LoraAdapter::load(dir, &m.adapter_target()).unwrap_err()
}

#[test]
fn truncated_safetensors() {
    let m = model("tiny-llama");
    let (_t, dir) = copy_adapter("tiny-llama/adapters/qv_r8");
    let p = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir, &m);
    assert!(matches!(err, Error::AdapterWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("adapter_model.safetensors: cannot parse"), "{err}");
}

#[test]
fn rank_mismatch_names_the_tensor() {
    let m = model("tiny-llama");
    let (_t, dir) = copy_adapter("tiny-llama/adapters/qv_r8");
    edit_config(&dir, |v| v["r"] = 4.into());
    let err = load(&dir, &m);
    match &err {
        Error::ShapeMismatch { tensor, expected, got, .. } => {
            assert!(tensor.ends_with(".lora_A.weight"), "{tensor}");
            assert_eq!(expected[0], 4);
            assert_eq!(got[0], 8);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn adapter_for_another_hidden_size() {
    // A tiny-llama adapter (hidden 64) on tiny-mistral (another hidden size / head layout).
    let m = model("tiny-mistral");
    let err = load(&fixture("tiny-llama/adapters/all_r4"), &m);
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("has shape"), "{err}");
}

#[test]
fn missing_config() {
    let m = model("tiny-llama");
    let (_t, dir) = copy_adapter("tiny-llama/adapters/qv_r8");
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let err = load(&dir, &m);
    assert!(matches!(err, Error::AdapterConfigMissing(_)), "{err:?}");
    assert!(err.to_string().ends_with("adapter_config.json is missing"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let m = model("tiny-llama");
    let (_t, dir) = copy_adapter("tiny-llama/adapters/qv_r8");
    let p = dir.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    let gone = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    assert!(tensors.remove(gone).is_some());
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let err = load(&dir, &m);
    assert!(matches!(err, Error::MissingTensor { ref tensor, .. } if tensor == gone), "{err:?}");
}

#[test]
fn unknown_module_and_dora_are_refused() {
    let m = model("tiny-llama");
    let (_t, dir) = copy_adapter("tiny-llama/adapters/qv_r8");
    edit_config(&dir, |v| v["target_modules"] = serde_json::json!(["q_proj", "v_proj", "embed_tokens"]));
    assert!(matches!(load(&dir, &m), Error::UnknownModule { ref module, .. } if module == "embed_tokens"));
    edit_config(&dir, |v| {
        v["target_modules"] = serde_json::json!(["q_proj", "v_proj"]);
        v["use_dora"] = true.into();
    });
    assert!(matches!(load(&dir, &m), Error::AdapterUnsupported { ref field, .. } if field == "use_dora"));
}

#[test]
fn tensors_for_untargeted_modules_are_unexpected() {
    let m = model("tiny-llama");
    let (_t, dir) = copy_adapter("tiny-llama/adapters/qv_r8");
    edit_config(&dir, |v| v["target_modules"] = serde_json::json!(["q_proj"]));
    let err = load(&dir, &m);
    assert!(matches!(err, Error::UnexpectedTensor { ref tensor, .. } if tensor.contains("v_proj")), "{err:?}");
}
