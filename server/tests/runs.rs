//! The web app's runs on a real listener: one generation per pane however many streams open it, text stored while
//! it streams, Stop and transient failures, and votes that only count from visitors who saw the run.

mod common;

use common::{engine_config, listen, start_run, state};
use futures_util::StreamExt;
use serde_json::{json, Value};
use server::config::HttpOptions;
use std::net::SocketAddr;
use std::time::Duration;

/// A live server on the tiny fixture (its adapters under their own ids), and its state.
async fn live(edit: impl FnOnce(&mut engine::EngineConfig)) -> (SocketAddr, app::state::AppState) {
    let mut cfg = engine_config();
    // The task's template is longer than the API tests' 64 tokens.
    cfg.max_input_tokens = 200;
    edit(&mut cfg);
    let st = state(Some(cfg)).await;
    (listen(st.clone(), HttpOptions::default()).await, st)
}

/// The pane events of `/runs/{id}/stream`, read to its end.
async fn stream(addr: SocketAddr, id: &str, cookie: Option<&str>) -> Vec<Value> {
    let mut req = reqwest::Client::new().get(format!("http://{addr}/runs/{id}/stream"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
    let mut out = Vec::new();
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        if e.event == "end" {
            return out;
        }
        out.push(serde_json::from_str(&e.data).unwrap());
    }
    panic!("the stream ended without `end`");
}

fn text_of(events: &[Value], pane: i64) -> String {
    events.iter().filter(|e| e["pane"] == pane && e["type"] == "text").map(|e| e["text"].as_str().unwrap()).collect()
}

fn status_of(events: &[Value], pane: i64) -> Value {
    events.iter().rev().find(|e| e["pane"] == pane && e["type"] == "status").cloned().unwrap_or_default()
}

async fn pane_row(st: &app::state::AppState, id: &str, pane: i64) -> (String, String, Option<String>) {
    sqlx::query_as("SELECT status, text, error FROM outputs WHERE run_id = $1 AND pane = $2")
        .bind(id)
        .bind(pane)
        .fetch_one(&st.db)
        .await
        .unwrap()
}

fn submitted(st: &app::state::AppState) -> u64 {
    engine::EngineStats::get(&st.engine.get().unwrap().stats().submitted)
}

/// 70 streams of one 4-pane run opened at once (a visitor's tabs, a shared link going round): the run's panes
/// generate once each, every stream shows every pane's whole answer, and an API request beside them is served.
#[tokio::test]
async fn seventy_opens_of_a_four_pane_run_cause_four_generations() {
    let (addr, st) = live(|c| c.faults.step_delay = Some(Duration::from_millis(5))).await;
    let (id, cookie) = start_run(addr, "a fine , funny film .", json!(["qv_r8", "all_r4", "mlp_r2", null]), 40).await;
    let before = submitted(&st);
    let opens: Vec<_> = (0..70)
        .map(|i| {
            let (id, cookie) = (id.clone(), cookie.clone());
            // The owner's tabs and, for a third of them, visitors without its cookie.
            tokio::spawn(async move { stream(addr, &id, (i % 3 != 0).then_some(cookie.as_str())).await })
        })
        .collect();
    let api = reqwest::Client::new()
        .post(format!("http://{addr}/generate"))
        .json(&json!({"inputs": "Hello", "parameters": {"max_new_tokens": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
    let mut all = Vec::new();
    for open in opens {
        all.push(open.await.unwrap());
    }
    assert_eq!(submitted(&st) - before, 4 + 1, "four panes and the API request, nothing else");
    let stored: Vec<String> = sqlx::query_scalar("SELECT text FROM outputs WHERE run_id = $1 ORDER BY pane")
        .bind(&id)
        .fetch_all(&st.db)
        .await
        .unwrap();
    // Every stream opened by the owner (or after the panes ended) shows the whole answers; a visitor's stream
    // opened before the owner's first one shows the panes as stored then (not started), never a second generation.
    let mut complete = 0;
    for events in &all {
        let statuses: Vec<Value> = (0..4).map(|p| status_of(events, p)["status"].clone()).collect();
        if statuses.iter().all(|s| s == "done") {
            complete += 1;
            for (pane, text) in stored.iter().enumerate() {
                assert_eq!(&text_of(events, pane as i64), text);
            }
        }
    }
    assert!(complete >= 46, "the owner's 46 streams see every pane done: {complete}");
}

/// Stop ends every generating pane of the run as `cancelled`, with the text it had; the text was stored while it
/// streamed. Only the run's own session can stop it.
#[tokio::test]
async fn stop_keeps_the_text_and_the_row_follows_the_stream() {
    let (addr, st) = live(|c| c.faults.step_delay = Some(Duration::from_millis(20))).await;
    let (id, cookie) = start_run(addr, "a fine , funny film .", json!([null]), 120).await;
    let watch = tokio::spawn({
        let (id, cookie) = (id.clone(), cookie.clone());
        async move { stream(addr, &id, Some(&cookie)).await }
    });
    // The text lands in the row while it streams.
    let mut stored = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = pane_row(&st, &id, 0).await.1;
        if stored.len() > 3 {
            break;
        }
    }
    assert!(stored.len() > 3, "no text stored while streaming");
    let stop = |cookie: Option<&str>| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{addr}/api/stop_run"))
            .header("accept", "application/json")
            .form(&[("id", id.as_str())]);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let stranger = stop(None).await.unwrap();
    assert_eq!(stranger.status(), 403, "a stranger stops nothing");
    assert!(stranger.text().await.unwrap().contains("only the session that made a run can stop it"));
    assert_eq!(stop(Some(&cookie)).await.unwrap().text().await.unwrap(), "1");
    let events = watch.await.unwrap();
    assert_eq!(status_of(&events, 0)["status"], "cancelled");
    let (status, text, _) = pane_row(&st, &id, 0).await;
    assert_eq!(status, "cancelled");
    assert!(text.starts_with(&stored) && text == text_of(&events, 0), "{text:?} vs {stored:?}");
}

/// A pane that cannot run for a passing reason (the queue is full) says so, and stays `pending` in the database
/// (it runs when opened again), instead of storing the error as its answer.
#[tokio::test]
async fn a_full_queue_is_shown_but_not_stored_as_the_answer() {
    let (addr, st) = live(|c| {
        c.max_queue = 1;
        c.faults.step_delay = Some(Duration::from_millis(20));
    })
    .await;
    let (id, cookie) = start_run(addr, "a fine , funny film .", json!([null]), 4).await;
    let busy = tokio::spawn(
        reqwest::Client::new()
            .post(format!("http://{addr}/generate"))
            .json(&json!({"inputs": "Hello", "parameters": {"max_new_tokens": 60}}))
            .send(),
    );
    while engine::EngineStats::get(&st.engine.get().unwrap().stats().running) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let events = stream(addr, &id, Some(&cookie)).await;
    let status = status_of(&events, 0);
    assert_eq!(status["status"], "error");
    assert!(status["error"].as_str().unwrap().contains("busy"), "{status}");
    assert_eq!(pane_row(&st, &id, 0).await, ("pending".to_string(), String::new(), None));
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    let again = stream(addr, &id, Some(&cookie)).await;
    assert_eq!(status_of(&again, 0)["status"], "done");
}

/// Votes come from sessions that exist and opened the run: a hundred cookie-less posts, or a session that never
/// saw the run, change no win rate; a visitor who opened the shared page can vote.
#[tokio::test]
async fn votes_count_only_from_visitors_who_saw_the_run() {
    let (addr, st) = live(|_| {}).await;
    let (id, owner) = start_run(addr, "a fine , funny film .", json!(["qv_r8", null]), 3).await;
    stream(addr, &id, Some(&owner)).await;
    let vote = |cookie: Option<String>, pane: i64| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{addr}/api/vote"))
            .header("accept", "application/json")
            .form(&[("run_id", id.clone()), ("pane", pane.to_string())]);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    for _ in 0..100 {
        let res = vote(None, 0).await.unwrap();
        assert_eq!(res.status(), 403);
    }
    let votes =
        || async { sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM votes").fetch_one(&st.db).await.unwrap() };
    assert_eq!(votes().await, 0);
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&st.db).await.unwrap();
    assert_eq!(sessions, 1, "vote posts create no sessions");
    // A session that exists but never opened this run cannot vote on it.
    let (_, stranger) = start_run(addr, "a fine , funny film .", json!([null]), 1).await;
    assert!(!vote(Some(stranger.clone()), 0).await.unwrap().status().is_success());
    // Once it opens the run's page, it can.
    let page = reqwest::Client::new().get(format!("http://{addr}/r/{id}")).header("cookie", &stranger).send().await;
    assert_eq!(page.unwrap().status(), 200);
    assert!(vote(Some(stranger), 0).await.unwrap().status().is_success());
    assert_eq!(votes().await, 1);
}

/// A pane waiting for its first token (here a step that takes 6 s; in production an adapter coming from the hub, a
/// full batch, a long prompt's prefill) keeps its row fresh while it waits, so that a replica following it, or one
/// starting up, never takes it for a pane whose process died (`STALE_AFTER`) and cuts it off.
#[tokio::test]
async fn a_pane_waiting_for_its_first_token_keeps_its_row_fresh() {
    let (addr, st) = live(|c| c.faults.stall_at_step = Some((0, Duration::from_secs(6)))).await;
    let (id, cookie) = start_run(addr, "a fine , funny film .", json!([null]), 4).await;
    let watch = tokio::spawn({
        let id = id.clone();
        async move { stream(addr, &id, Some(&cookie)).await }
    });
    let row = || async {
        let row: (String, i64, String) =
            sqlx::query_as("SELECT status, updated_at, text FROM outputs WHERE run_id = $1 AND pane = 0")
                .bind(&id)
                .fetch_one(&st.db)
                .await
                .unwrap();
        row
    };
    while row().await.0 != "running" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, updated, text) = row().await;
    let age = app::context::now_ms() - updated;
    assert_eq!((status.as_str(), text.as_str()), ("running", ""), "still waiting for its first token");
    let most = app::run::store::HEARTBEAT_EVERY + app::run::executor::FLUSH_EVERY + Duration::from_millis(500);
    assert!(age < most.as_millis() as i64, "the row was last written {age} ms ago");
    let events = watch.await.unwrap();
    assert_eq!(status_of(&events, 0)["status"], "done");
}

/// The first run after a server starts, made as the playground's browser test makes it (#17: once, its adapter pane
/// never finished): a cold adapter's pane beside the base model's, 12 new tokens, the stream opened by the run's
/// owner at once. Every round starts a new engine (its adapters cold) and a new server; both panes end done, each
/// with its 12 tokens, within seconds, 200 times in a row (`LORALAND_COLD_ROUNDS` sets the rounds; 7 s here).
#[tokio::test]
async fn the_first_run_after_start_streams_both_panes_to_the_end() {
    let rounds: usize = std::env::var("LORALAND_COLD_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(200);
    for round in 0..rounds {
        let mut cfg = engine_config();
        cfg.max_input_tokens = 200;
        let st = state(Some(cfg)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = server::router_with(st, &HttpOptions::default());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let sentence = "the plot is nothing but a string of tired clichés .";
        let (id, cookie) = start_run(addr, sentence, json!(["qv_r8", null]), 12).await;
        let events = tokio::time::timeout(Duration::from_secs(20), stream(addr, &id, Some(&cookie)))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the run's stream did not end within 20 s"));
        for pane in [0, 1] {
            let status = status_of(&events, pane);
            assert_eq!(status["status"], "done", "round {round}, pane {pane}: {events:?}");
            assert_eq!(status["timings"]["generated_tokens"], 12, "round {round}, pane {pane}: {status}");
        }
        // The server, its state and its engine go (the engine thread stops once its last handle is dropped).
        server.abort();
    }
}
