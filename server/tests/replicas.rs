//! Replicas that share one Postgres database, as behind a load balancer: each its own engine and listener, any of
//! them answering any request. A run started through one streams, is voted on and is listed through another, and
//! opening it elsewhere never starts a second generation of a pane. Needs a Postgres server
//! (`LORALAND_TEST_POSTGRES`, which `make unit` sets through scripts/with-postgres.sh).

mod common;

use common::{engine_config, listen, start_run, state_on};
use futures_util::StreamExt;
use serde_json::{json, Value};
use server::config::HttpOptions;
use std::net::SocketAddr;
use std::time::Duration;

/// A Postgres database for this test, or `None` (said loudly) outside CI when no server is named.
async fn postgres() -> Option<server::db::Db> {
    match std::env::var("LORALAND_TEST_POSTGRES") {
        Ok(url) => Some(server::db::fresh_postgres(&url).await),
        Err(_) if std::env::var_os("CI").is_some() => panic!("CI runs the replica tests: use scripts/with-postgres.sh"),
        Err(_) => {
            eprintln!("LORALAND_TEST_POSTGRES is not set: the replica test did not run");
            None
        }
    }
}

fn submitted(st: &app::state::AppState) -> u64 {
    engine::EngineStats::get(&st.engine.get().unwrap().stats().submitted)
}

/// A server function's JSON answer.
async fn call(addr: SocketAddr, f: &str, cookie: &str, form: &[(&str, String)]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/{f}"))
        .header("accept", "application/json")
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

/// The pane events of a run's stream, to its end.
async fn events(addr: SocketAddr, id: &str, cookie: &str) -> Vec<Value> {
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/runs/{id}/stream"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
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

fn text(events: &[Value], pane: i64) -> String {
    events.iter().filter(|e| e["pane"] == pane && e["type"] == "text").map(|e| e["text"].as_str().unwrap()).collect()
}

fn status(events: &[Value], pane: i64) -> Value {
    events.iter().rev().find(|e| e["pane"] == pane && e["type"] == "status").cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_run_started_on_one_replica_streams_is_voted_on_and_listed_through_another() {
    let Some(db) = postgres().await else { return };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut cfg = engine_config();
        cfg.max_input_tokens = 200;
        // Slow enough that the run is still generating on A when B opens it.
        cfg.faults.step_delay = Some(Duration::from_millis(40));
        let st = state_on(db.clone(), Some(cfg)).await;
        replicas.push((listen(st.clone(), HttpOptions::default()).await, st));
    }
    let [(a, sa), (b, sb)] = [replicas.remove(0), replicas.remove(0)];

    // Started through A, by a new visitor.
    let (id, cookie) = start_run(a, "a fine , funny film .", json!(["qv_r8", null]), 24).await;

    // A generates it; while it does, its owner's stream on B follows the stored rows to the same end.
    let on_a = tokio::spawn({
        let (id, cookie) = (id.clone(), cookie.clone());
        async move { events(a, &id, &cookie).await }
    });
    let running = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs WHERE run_id = $1 AND status = 'running'")
            .bind(&id)
            .fetch_one(&sa.db)
            .await
            .unwrap();
        n
    };
    let mut waited = 0;
    while running().await < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 500, "A never started the panes");
    }
    let on_b = events(b, &id, &cookie).await;
    let on_a = on_a.await.unwrap();
    assert_eq!(submitted(&sb), 0, "B started no generation of its own");
    assert_eq!(submitted(&sa), 2);
    for pane in 0..2 {
        assert_eq!(status(&on_a, pane)["status"], "done", "{on_a:?}");
        assert_eq!(status(&on_b, pane)["status"], "done", "{on_b:?}");
        assert!(!text(&on_a, pane).is_empty());
        assert_eq!(text(&on_b, pane), text(&on_a, pane), "pane {pane}: B's followed text is A's");
    }

    // The vote goes through B, the history is read through A and B alike.
    let vote = call(b, "vote", &cookie, &[("run_id", id.clone()), ("pane", "0".into())]).await;
    assert!(vote.status().is_success(), "{}", vote.text().await.unwrap());
    let rates = call(a, "win_rates", &cookie, &[]).await.json::<Value>().await.unwrap();
    assert_eq!(rates, json!([{"adapter": "qv_r8", "votes": 1, "wins": 1}]));
    for replica in [a, b] {
        let page = call(replica, "list_runs", &cookie, &[("page", "0".into())]).await.json::<Value>().await.unwrap();
        assert_eq!(page["runs"][0]["id"], id.as_str(), "{page}");
        assert_eq!(page["runs"][0]["finished"], 2, "{page}");
    }
    // The run's shared page renders on the replica that did not generate it.
    let page = reqwest::Client::new().get(format!("http://{b}/r/{id}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("a fine , funny film ."));
}

/// Two replicas that open a new run's stream at the same moment both read its panes as pending; the database
/// claim gives each pane to one of them, and the other follows it: one generation per pane, the same text on both.
#[tokio::test]
async fn replicas_opening_a_new_run_at_once_generate_each_pane_once() {
    let Some(db) = postgres().await else { return };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut cfg = engine_config();
        cfg.max_input_tokens = 200;
        cfg.faults.step_delay = Some(Duration::from_millis(20));
        let st = state_on(db.clone(), Some(cfg)).await;
        replicas.push((listen(st.clone(), HttpOptions::default()).await, st));
    }
    let [(a, sa), (b, sb)] = [replicas.remove(0), replicas.remove(0)];
    for round in 0..3 {
        let (id, cookie) =
            start_run(a, &format!("round {round} : a fine , funny film ."), json!(["qv_r8", null]), 16).await;
        let before = submitted(&sa) + submitted(&sb);
        let (on_a, on_b) = tokio::join!(events(a, &id, &cookie), events(b, &id, &cookie));
        assert_eq!(submitted(&sa) + submitted(&sb) - before, 2, "round {round}: one generation per pane");
        for pane in 0..2 {
            assert_eq!(status(&on_a, pane)["status"], "done", "{on_a:?}");
            assert_eq!(status(&on_b, pane)["status"], "done", "{on_b:?}");
            assert_eq!(text(&on_a, pane), text(&on_b, pane), "round {round}, pane {pane}");
        }
    }
}
