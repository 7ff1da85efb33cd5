//! No silent hangs: a request waiting for an adapter that never arrives fails with a deadline that says what the
//! adapter was doing; a batching loop that stops beating is reported stalled; a panicking engine thread fails every
//! request with a clear error and reports itself stopped; a panic while loading an adapter fails that adapter's
//! requests at once and the loader goes on. On the tiny Llama fixture.

mod common;

use common::fixture;
use engine::{
    AdapterId, Catalog, Engine, EngineConfig, Error, Event, GenerateRequest, GenerationStream, Health, Prompt,
    SamplingParams,
};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn config() -> EngineConfig {
    let mut cfg = EngineConfig::new(fixture("tiny-llama/base"));
    cfg.catalog =
        Catalog { adapters_dir: Some(fixture("tiny-llama/adapters")), allow_hub: false, ..Default::default() };
    cfg
}

fn request(adapter: Option<&str>, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(vec![1, 5, 9, 13]),
        adapter: adapter.map(|a| AdapterId::new(a).unwrap()),
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        stop: vec![],
        ..GenerateRequest::default()
    }
}

/// The stream's tokens and its end: the finish, or the error.
fn finish(mut stream: GenerationStream) -> (usize, Result<(), Error>) {
    let mut tokens = 0;
    loop {
        match stream.blocking_next() {
            Some(Ok(Event::Token(_))) => tokens += 1,
            Some(Ok(Event::Finished(_))) => return (tokens, Ok(())),
            Some(Err(e)) => return (tokens, Err(e)),
            None => panic!("a stream must end with Finished or an error"),
        }
    }
}

/// A hub whose downloads never answer: connections are accepted and held.
fn silent_hub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    format!("http://{addr}")
}

/// The tests that point the process-wide `HF_ENDPOINT` at a hub of their own take turns.
static HUB: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_request_whose_adapter_never_arrives_times_out_and_says_why() {
    let _hub = HUB.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("HF_ENDPOINT", silent_hub());
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    let mut cfg = config();
    cfg.catalog.allow_hub = true;
    cfg.adapter_load_timeout = Duration::from_millis(1500);
    let engine = Engine::spawn(cfg).unwrap();
    let start = Instant::now();
    let stuck = engine.generate(request(Some("someone/never-answers"), 4)).unwrap();
    // The engine keeps serving meanwhile.
    let (tokens, done) = finish(engine.generate(request(None, 4)).unwrap());
    assert_eq!((tokens, done.is_ok()), (4, true));
    let (tokens, err) = finish(stuck);
    let waited = start.elapsed();
    let err = err.unwrap_err();
    assert_eq!(tokens, 0);
    assert!(matches!(&err, Error::AdapterLoadTimeout { id, .. } if id.as_str() == "someone/never-answers"), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("after 1.") && message.contains("loading for"), "{message}");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(engine::EngineStats::get(&engine.stats().adapter_load_timeouts), 1);
    assert_eq!(engine.health(), Health::Ok, "an idle loop still beats");
}

#[test]
fn a_loop_that_stops_beating_is_reported_stalled_until_it_beats_again() {
    let mut cfg = config();
    cfg.stall_after = Duration::from_millis(300);
    cfg.faults.stall_at_step = Some((0, Duration::from_millis(1500)));
    let engine = Engine::spawn(cfg).unwrap();
    assert_eq!(engine.health(), Health::Ok);
    let stream = engine.generate(request(None, 3)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let stalled = loop {
        match engine.health() {
            Health::Stalled { for_ } => break for_,
            _ if Instant::now() > deadline => panic!("never reported stalled"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(stalled > Duration::from_millis(300), "{stalled:?}");
    let (tokens, done) = finish(stream);
    assert_eq!((tokens, done.is_ok()), (3, true));
    assert_eq!(engine.health(), Health::Ok);
}

#[test]
fn a_panicking_engine_fails_every_request_and_reports_stopped() {
    let mut cfg = config();
    cfg.faults.panic_at_step = Some(0);
    let engine = Engine::spawn(cfg).unwrap();
    let running = engine.generate(request(None, 8));
    // This one is submitted around the moment the thread dies: refused at once, or failed in its stream.
    let waiting = engine.generate(request(Some("qv_r8"), 8));
    for submitted in [running, waiting] {
        let err = submitted.and_then(|stream| finish(stream).1);
        assert!(matches!(err, Err(Error::EngineStopped)), "{err:?}");
    }
    assert_eq!(engine.health(), Health::Stopped);
    assert!(matches!(engine.generate(request(None, 2)), Err(Error::EngineStopped)));
}

/// The web app's first run: a request on a cold adapter and one on the base model, submitted together to a fresh
/// engine (the adapter's load races the engine loop's first look at its request). Every one of many fresh engines
/// answers both in full.
#[test]
fn a_cold_adapter_beside_the_base_model_always_answers() {
    for round in 0..100 {
        let engine = Engine::spawn(config()).unwrap();
        let streams = [engine.generate(request(Some("qv_r8"), 6)).unwrap(), engine.generate(request(None, 6)).unwrap()];
        let (tx, rx) = std::sync::mpsc::channel();
        for (pane, stream) in streams.into_iter().enumerate() {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send((pane, finish(stream))).unwrap());
        }
        for _ in 0..2 {
            let (pane, (tokens, done)) = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("round {round}: a request hung; {:?}", engine.stats()));
            assert_eq!((tokens, done.is_ok()), (6, true), "round {round}, request {pane}");
        }
    }
}

/// Four ordinary requests and what each gives alone.
fn neighbours(engine: &engine::EngineHandle) -> (Vec<GenerateRequest>, Vec<Vec<u32>>) {
    let requests: Vec<GenerateRequest> = [None, Some("qv_r8"), Some("all_r4"), None]
        .into_iter()
        .enumerate()
        .map(|(i, a)| GenerateRequest { prompt: Prompt::Tokens(vec![1, 7 + i as u32, 9, 30]), ..request(a, 10) })
        .collect();
    let alone = requests.iter().map(|r| tokens(engine.generate(r.clone()).unwrap()).unwrap()).collect();
    (requests, alone)
}

fn tokens(mut stream: GenerationStream) -> Result<Vec<u32>, Error> {
    let mut ids = Vec::new();
    loop {
        match stream.blocking_next() {
            Some(Ok(Event::Token(t))) => ids.push(t.id),
            Some(Ok(Event::Finished(_))) => return Ok(ids),
            Some(Err(e)) => return Err(e),
            None => panic!("a stream must end with Finished or an error"),
        }
    }
}

/// The case a visitor hit: one request asks for more than the model's context (a 256-token fixture) while four
/// others run. It is refused before it is queued, naming the context, and the four get exactly their own tokens.
#[test]
fn a_request_over_the_context_is_refused_alone_and_the_others_get_their_tokens() {
    let mut cfg = config();
    cfg.max_new_tokens = 300;
    let engine = Engine::spawn(cfg).unwrap();
    let (requests, alone) = neighbours(&engine);
    let streams: Vec<_> = requests.iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
    let long = GenerateRequest { prompt: Prompt::Tokens(vec![5; 44]), ..request(Some("qv_r8"), 256) };
    let err = engine.generate(long).unwrap_err();
    assert!(matches!(err, Error::ContextExceeded { prompt: 44, max_new_tokens: 256, context: 256 }), "{err:?}");
    assert!(err.to_string().contains("exceeds the model's context of 256 tokens"), "{err}");
    // Asked to fit the context instead, the same request is lowered to the room left and runs.
    let fitted = GenerateRequest { prompt: Prompt::Tokens(vec![5; 44]), fit_context: true, ..request(None, 256) };
    assert_eq!(engine.prepare(fitted).unwrap().request().max_new_tokens, 256 - 44);
    for (stream, want) in streams.into_iter().zip(&alone) {
        assert_eq!(&tokens(stream).unwrap(), want);
    }
}

/// A sequence whose logits are not numbers fails alone; the others in its steps get exactly their own tokens.
#[test]
fn a_sequence_with_nan_logits_fails_alone() {
    let clean = Engine::spawn(config()).unwrap();
    let (requests, alone) = neighbours(&clean);
    let mut cfg = config();
    cfg.faults.nan_logits_for = Some(AdapterId::new("mlp_r2").unwrap());
    let engine = Engine::spawn(cfg).unwrap();
    let bad = engine.generate(request(Some("mlp_r2"), 10)).unwrap();
    let streams: Vec<_> = requests.iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
    let err = tokens(bad).unwrap_err();
    assert!(err.to_string().contains("not a number"), "{err}");
    for (stream, want) in streams.into_iter().zip(&alone) {
        assert_eq!(&tokens(stream).unwrap(), want);
    }
}

/// A step that fails because of one sequence (after the model wrote every row's keys and values) is rolled back
/// and retried row by row: that sequence fails, and the others go on with exactly their own tokens.
#[test]
fn a_step_failed_by_one_sequence_is_rolled_back_and_fails_only_it() {
    let clean = Engine::spawn(config()).unwrap();
    let (requests, alone) = neighbours(&clean);
    let mut cfg = config();
    cfg.faults.forward_error_for = Some(AdapterId::new("attn_r16_rslora").unwrap());
    let engine = Engine::spawn(cfg).unwrap();
    let streams: Vec<_> = requests.iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
    let bad = engine.generate(request(Some("attn_r16_rslora"), 10)).unwrap();
    let err = tokens(bad).unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    for (stream, want) in streams.into_iter().zip(&alone) {
        assert_eq!(&tokens(stream).unwrap(), want);
    }
    assert_eq!(engine.health(), Health::Ok);
}

/// A hub that answers every file list with `list` (and nothing else exists on it).
fn fake_hub(list: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) =
                if head.starts_with("GET /api/models/") { ("200 OK", list) } else { ("404 Not Found", "") };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    format!("http://{addr}")
}

/// Hub downloads: an adapter over the size limit is refused from the hub's file list, before any download, with
/// the cause; a download that never answers gives up at its timeout; and local loads are never held up behind a
/// download. (One test: the hub's address is process-wide.)
#[test]
fn hub_downloads_are_bounded_and_never_hold_up_local_loads() {
    let _hub = HUB.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    let list = r#"{"sha": "abc", "siblings": [{"rfilename": "adapter_config.json", "size": 300},
        {"rfilename": "adapter_model.safetensors", "size": 99999999999, "lfs": {"size": 99999999999}}]}"#;
    std::env::set_var("HF_ENDPOINT", fake_hub(list));
    let mut cfg = config();
    cfg.catalog.allow_hub = true;
    cfg.hub.max_bytes = 1 << 20;
    let engine = Engine::spawn(cfg).unwrap();
    let (_, err) = finish(engine.generate(request(Some("someone/huge"), 2)).unwrap());
    let message = err.unwrap_err().to_string();
    assert!(
        message.contains("adapter_model.safetensors is 99999999999 bytes, more than the limit of 1048576"),
        "{message}"
    );

    std::env::set_var("HF_ENDPOINT", silent_hub());
    let mut cfg = config();
    cfg.catalog.allow_hub = true;
    cfg.hub.timeout = Duration::from_secs(2);
    let engine = Engine::spawn(cfg).unwrap();
    let start = Instant::now();
    let stuck = engine.generate(request(Some("someone/slow"), 2)).unwrap();
    let (tokens, local) = finish(engine.generate(request(Some("qv_r8"), 4)).unwrap());
    assert_eq!((tokens, local.is_ok()), (4, true));
    assert!(start.elapsed() < Duration::from_secs(2), "the local adapter waited for the download");
    let (_, err) = finish(stuck);
    let message = err.unwrap_err().to_string();
    assert!(message.contains("cannot fetch adapter someone/slow from the hub"), "{message}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A panic while loading one adapter fails that adapter's requests at once, with an error that names it, and the
/// loader goes on loading the others. (Uncaught, the panic ended the loader thread: the adapter stayed marked as
/// loading, its requests waited for the whole load timeout, and every later load failed.)
#[test]
fn a_panic_while_loading_an_adapter_fails_only_its_requests_and_the_loader_goes_on() {
    let mut cfg = config();
    cfg.faults.panic_loading = Some(AdapterId::new("qv_r8").unwrap());
    // Without the panic caught, its request would wait for this long and end with a timeout.
    cfg.adapter_load_timeout = Duration::from_secs(5);
    let engine = Engine::spawn(cfg).unwrap();
    let start = Instant::now();
    let (tokens, end) = finish(engine.generate(request(Some("qv_r8"), 4)).unwrap());
    let err = end.unwrap_err();
    assert!(matches!(&err, Error::AdapterLoad { id, .. } if id.as_str() == "qv_r8"), "{err:?}");
    assert_eq!(tokens, 0);
    assert!(start.elapsed() < Duration::from_secs(10), "failed after {:?}, not at once", start.elapsed());
    for adapter in [Some("all_r4"), None, Some("mlp_r2")] {
        let (tokens, end) = finish(engine.generate(request(adapter, 4)).unwrap());
        assert_eq!((tokens, end.map_err(|e| e.to_string())), (4, Ok(())), "{adapter:?}");
    }
    // Asked for again, it is tried again (and fails again the same way), not left waiting.
    let (_, again) = finish(engine.generate(request(Some("qv_r8"), 4)).unwrap());
    assert!(matches!(again, Err(Error::AdapterLoad { .. })), "{again:?}");
}
