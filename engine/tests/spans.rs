//! The engine's log lines about a request carry the request's span, a child of its caller's: the loader's "loading
//! adapter", the engine thread's "adapter loaded", a request failing alone and its finish are tied to the request id
//! the server gave it, though they are written on other threads. On the tiny Llama fixture.

mod common;

use common::fixture;
use engine::{AdapterId, Catalog, Engine, EngineConfig, Event, GenerateRequest, Prompt, SamplingParams};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where the test's subscriber writes.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }
}

fn request(adapter: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(vec![1, 5, 9, 13]),
        adapter: Some(AdapterId::new(adapter).unwrap()),
        sampling: SamplingParams::greedy(),
        max_new_tokens: 3,
        ..GenerateRequest::default()
    }
}

#[test]
fn engine_lines_about_a_request_carry_its_callers_span() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let mut cfg = EngineConfig::new(fixture("tiny-llama/base"));
    cfg.catalog = Catalog { adapters_dir: Some(fixture("tiny-llama/adapters")), ..Default::default() };
    cfg.faults.nan_logits_for = Some(AdapterId::new("all_r4").unwrap());
    let engine = Engine::spawn(cfg).unwrap();

    let ok =
        tracing::info_span!("request", request_id = "req-ok").in_scope(|| engine.generate(request("qv_r8"))).unwrap();
    let bad =
        tracing::info_span!("request", request_id = "req-bad").in_scope(|| engine.generate(request("all_r4"))).unwrap();
    for mut stream in [ok, bad] {
        while let Some(event) = stream.blocking_next() {
            if matches!(event, Ok(Event::Finished(_)) | Err(_)) {
                break;
            }
        }
    }
    drop(engine);

    let one = |needle: &str, adapter: &str| {
        let lines: Vec<String> = log.lines_with(needle).into_iter().filter(|l| l.contains(adapter)).collect();
        assert_eq!(lines.len(), 1, "one {needle:?} line for {adapter}: {lines:#?}");
        lines[0].clone()
    };
    for needle in ["loading adapter", "adapter loaded"] {
        assert!(one(needle, "qv_r8").contains("req-ok"), "{needle}: {:#?}", log.lines_with(needle));
        assert!(one(needle, "all_r4").contains("req-bad"), "{needle}: {:#?}", log.lines_with(needle));
    }
    let failed = log.lines_with("failed alone");
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(failed[0].contains("req-bad") && !failed[0].contains("req-ok"), "{failed:#?}");
    let finished = log.lines_with(": finished");
    assert_eq!(finished.len(), 1, "{finished:#?}");
    assert!(finished[0].contains("req-ok") && finished[0].contains("qv_r8"), "{finished:#?}");
}
