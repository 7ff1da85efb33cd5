//! The binary refuses to start with one clear line on stderr (never a panic) when something it needs is missing.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama/base")
}

fn loraland(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loraland"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("LEPTOS_SITE_ADDR")
        .output()
        .expect("run loraland")
}

/// Asserts a failed exit with exactly one line on stderr that starts with `error: ` and contains `needle`.
fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn missing_model_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let out = loraland(&[
        "serve",
        "--model",
        "/no/such/model.gguf",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_refused(&out, "model not found at /no/such/model.gguf");
}

#[test]
fn unwritable_database_is_refused() {
    let out = loraland(&[
        "serve",
        "--model",
        fixture_model().to_str().unwrap(),
        "--database-url",
        "sqlite:///no/such/folder/loraland.db",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_refused(&out, "cannot open database sqlite:///no/such/folder/loraland.db");
}

#[test]
fn port_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = loraland(&[
        "serve",
        "--model",
        fixture_model().to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--addr",
        &addr,
    ]);
    assert_refused(&out, &format!("cannot listen on {addr}"));
}

#[test]
fn model_that_fails_to_load_stops_the_server() {
    // The server listens while the model loads; a load failure ends it with that error.
    let model = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture_model().join(f), model.path().join(f)).unwrap();
    }
    std::fs::write(model.path().join("model.safetensors"), b"not a safetensors file").unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = loraland(&[
        "serve",
        "--model",
        model.path().to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ]);
    assert_refused(&out, "cannot load the model");
}
