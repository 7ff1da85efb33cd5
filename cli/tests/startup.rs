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

/// One HTTP/1.1 exchange with a server on `addr` (the whole reply), or `None` if it fails or takes over 30 s.
fn http(addr: &str, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
    conn.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// Waits for `/health` on `addr` to answer 200.
fn wait_ready(addr: &str) {
    let health = "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http(addr, health).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(std::time::Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A `POST /generate` of `body`, closing the connection after the reply.
fn generate_request(body: &str) -> String {
    format!(
        "POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `loraland serve` of the tiny fixture model on a free loopback port with a fresh data folder, logging at `log`,
/// with `extra` arguments: the command (stderr piped), the address and the folder (kept while the test runs).
fn serve_on_a_free_port(log: &str, extra: &[&str]) -> (Command, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_loraland"));
    command
        .args(["serve", "--model", fixture_model().to_str().unwrap(), "--data-dir", data.path().to_str().unwrap()])
        .args(["--addr", &addr])
        .args(extra)
        .env("RUST_LOG", log)
        .env_remove("LEPTOS_SITE_ADDR")
        .stderr(std::process::Stdio::piped());
    (command, addr, data)
}

/// A server whose log nobody reads keeps serving: the lines its reader does not take are dropped and counted, not
/// waited for. (Written straight to stderr, they stopped every thread that logged, the engine's included, once the
/// pipe's 64 KiB were full: at debug level after about 30 requests, and the server answered nothing more.)
#[test]
fn a_log_that_nobody_reads_does_not_stop_the_server() {
    let (mut command, addr, _data) = serve_on_a_free_port("debug", &["--client-requests-per-minute", "0"]);
    // Both held open, never read.
    let mut child = command.stdout(std::process::Stdio::piped()).spawn().unwrap();
    wait_ready(&addr);
    let mut answered = 0;
    for i in 0..300 {
        let body = format!(r#"{{"inputs": "hello {i}", "parameters": {{"max_new_tokens": 4}}}}"#);
        match http(&addr, &generate_request(&body)) {
            Some(reply) if reply.starts_with("HTTP/1.1 200") => answered += 1,
            reply => {
                let _ = child.kill();
                panic!("request {i} after {answered} answered: {reply:?}");
            }
        }
    }
    let metrics = http(&addr, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, 300);
    assert!(metrics.contains("loraland_log_lines_dropped_total"), "{metrics}");
}

/// A serving process whose engine thread dies answers its requests with a clear error, says so on /health, and
/// exits non-zero (for its supervisor to start a fresh one) instead of serving errors forever.
#[test]
fn an_engine_that_stops_takes_the_server_down_with_an_error() {
    use std::io::Read;
    let (mut command, addr, _data) = serve_on_a_free_port("error", &["--inject-panic-at-step", "0"]);
    let mut child = command.spawn().unwrap();
    wait_ready(&addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = r#"{"inputs": "hello", "parameters": {"max_new_tokens": 3}}"#;
    let reply = http(&addr, &generate_request(body)).expect("an answer to /generate");
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

/// `kill -9` in the middle of a stream: the pane's text so far is in its row (stored while it streamed), and the
/// restarted server marks the pane `interrupted`, keeps that text, and runs it again when its owner opens it.
#[tokio::test]
async fn a_pane_cut_off_by_kill_9_is_interrupted_with_its_text_and_runs_again() {
    use futures_util::StreamExt;
    let data = tempfile::tempdir().unwrap();
    let adapters = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    /// Kills the server when the test ends, passed or not.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let serve = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loraland"));
        child
            .args(["serve", "--model", fixture_model().to_str().unwrap(), "--data-dir", data.path().to_str().unwrap()])
            .args(["--adapters-dir", adapters.path().to_str().unwrap(), "--addr", &format!("127.0.0.1:{port}")])
            .args(["--inject-step-delay-ms", "30"])
            .env("RUST_LOG", "error")
            .env_remove("LEPTOS_SITE_ADDR")
            .stdout(std::process::Stdio::null());
        Server(child.spawn().unwrap())
    };
    let ready = || async {
        for _ in 0..600 {
            if reqwest::get(format!("{base}/health")).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the server never became ready");
    };
    let mut first = serve();
    ready().await;
    let body = serde_json::json!({"request": {"task": "glue_sst2", "inputs": {"sentence": "so slow ."},
        "params": {"max_new_tokens": 100, "temperature": 0.0, "top_p": 1.0, "seed": 0}, "panes": [null]}});
    let client = reqwest::Client::new();
    let res = client.post(format!("{base}/api/start_run")).header("accept", "application/json").json(&body).send();
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.headers());
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let id: String = res.json().await.unwrap();
    let res = client.get(format!("{base}/runs/{id}/stream")).header("cookie", &cookie).send().await.unwrap();
    let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
    let db = server::db::connect(&format!("sqlite://{}", data.path().join("loraland.db").display())).await.unwrap();
    let row = |db: server::db::Db| {
        let id = id.clone();
        async move {
            sqlx::query_as::<_, (String, String)>("SELECT status, text FROM outputs WHERE run_id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let mut streamed = 0;
    while streamed < 5 {
        let e = events.next().await.unwrap().unwrap();
        streamed += usize::from(e.data.contains(r#""type":"text""#));
    }
    let mut before = row(db.clone()).await;
    while before.1.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        before = row(db.clone()).await;
    }
    first.0.kill().unwrap(); // SIGKILL: no shutdown code runs
    first.0.wait().unwrap();
    assert_eq!(before.0, "running");
    let second = serve();
    ready().await;
    let (status, text) = row(db.clone()).await;
    assert_eq!(status, "interrupted");
    assert!(!text.is_empty() && text.starts_with(&before.1), "{text:?} kept, was {:?}", before.1);
    // A visitor sees it as stored; its owner runs it again.
    let seen = client.get(format!("{base}/runs/{id}/stream")).send().await.unwrap().text().await.unwrap();
    assert!(seen.contains(r#""status":"interrupted""#), "{seen}");
    let again = client.get(format!("{base}/runs/{id}/stream")).header("cookie", &cookie).send().await.unwrap();
    assert!(again.text().await.unwrap().contains(r#""status":"done""#));
    assert_eq!(row(db).await.0, "done");
    drop(second);
}
