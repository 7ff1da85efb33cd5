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

/// A serving process whose engine thread dies answers its requests with a clear error, says so on /health, and
/// exits non-zero (for its supervisor to start a fresh one) instead of serving errors forever.
#[test]
fn an_engine_that_stops_takes_the_server_down_with_an_error() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loraland"))
        .args(["serve", "--model", fixture_model().to_str().unwrap(), "--data-dir", data.path().to_str().unwrap()])
        .args(["--addr", &addr, "--inject-panic-at-step", "0"])
        .env("RUST_LOG", "error")
        .env_remove("LEPTOS_SITE_ADDR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = |request: &str| -> Option<String> {
        let mut conn = std::net::TcpStream::connect(&addr).ok()?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
        conn.write_all(request.as_bytes()).ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    let health = "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http(health).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(std::time::Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let body = r#"{"inputs": "hello", "parameters": {"max_new_tokens": 3}}"#;
    let generate = format!(
        "POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = http(&generate).expect("an answer to /generate");
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("the inference engine has stopped"), "{reply}");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("the engine thread panicked: injected fault at step 0"), "{stderr}");
    assert!(stderr.contains("error: the inference engine stopped"), "{stderr}");
}
