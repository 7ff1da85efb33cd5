//! Training jobs end to end through the real router and a real listener: the Train form's multipart POST on the
//! tiny fixture model, the job's live events to `done` with its loss curve and held-out score, the adapter served
//! by the engine as `trained/<job>` and downloaded as a PEFT zip, privacy between sessions, the limits, cancel and
//! start again.

mod common;

use app::train::worker::{TrainSettings, Training};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Scores by exact match, with no synthetic data: the app's own lab, as a server without the lab crate has.
fn settings() -> TrainSettings {
    TrainSettings {
        threads: 1,
        max_upload_bytes: 64 << 10,
        max_examples: 200,
        max_steps: 500,
        jobs_per_session: 1,
        ..Default::default()
    }
}

async fn live(dir: &std::path::Path) -> (SocketAddr, app::state::AppState) {
    live_with(dir, settings()).await
}

async fn live_with(dir: &std::path::Path, settings: TrainSettings) -> (SocketAddr, app::state::AppState) {
    let mut cfg = common::engine_config();
    cfg.catalog.namespaces = [("trained".to_string(), dir.to_path_buf())].into();
    cfg.max_input_tokens = 512;
    let mut st = common::state(Some(cfg)).await;
    let training =
        Training::new(common::fixtures().join("base"), dir.to_path_buf(), Arc::new(app::train::NoLab), settings)
            .unwrap();
    training.start(st.db.clone(), st.engine.clone());
    st.training = Some(training);
    (common::listen(st.clone(), server::config::HttpOptions::default()).await, st)
}

/// A multipart body of `fields` and one file.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str)>) -> (String, Vec<u8>) {
    let boundary = "XtrainX";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!("--{boundary}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"));
    }
    if let Some((name, text)) = file {
        body.push_str(&format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             content-type: application/octet-stream\r\n\r\n{text}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (format!("multipart/form-data; boundary={boundary}"), body.into_bytes())
}

/// Twenty sentiment examples as JSONL.
fn examples() -> String {
    (0..20)
        .map(|i| {
            let (s, l) = if i % 2 == 0 { ("good", "positive") } else { ("bad", "negative") };
            serde_json::json!({"prompt": format!("Review {i}: {s}. Sentiment:"), "completion": format!(" {l}")})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn form(steps: &str) -> Vec<(&'static str, String)> {
    [
        ("name", "mine"),
        ("task", "glue_sst2"),
        ("source", "upload"),
        ("rank", "4"),
        ("alpha", "8"),
        ("lr", "0.001"),
        ("batch", "4"),
        ("targets", "q_proj"),
        ("targets", "v_proj"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .chain([("steps", steps.to_string())])
    .collect()
}

async fn create(
    addr: SocketAddr,
    fields: &[(&'static str, String)],
    file: Option<(&str, &str)>,
    cookie: Option<&str>,
    html: bool,
) -> reqwest::Response {
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ct, body) = multipart(&fields, file);
    let mut req = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{addr}/train/jobs"))
        .header("content-type", ct)
        .body(body);
    if html {
        req = req.header("accept", "text/html");
    }
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

/// The job's events until `end` (at most two minutes).
async fn events(addr: SocketAddr, id: &str, cookie: Option<&str>) -> (u16, Vec<Value>) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}/train/{id}/events"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = tokio::time::timeout(Duration::from_secs(120), async {
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    })
    .await
    .expect("the job's events end within 120 s");
    let jobs = res
        .1
        .split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .filter(|d| *d != "{}")
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["job"].clone())
        .collect();
    (res.0, jobs)
}

async fn server_fn(addr: SocketAddr, name: &str, body: &str, cookie: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/{name}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_trains_scores_serves_and_downloads_and_stays_private() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, st) = live(dir.path()).await;
    let data = examples();

    // A browser's form: sent to the job's page, with a new session's cookie.
    let res = create(addr, &form("6"), Some(("reviews.jsonl", &data)), None, true).await;
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let id = location.strip_prefix("/train/").expect("the job's page").to_string();

    // The session's second job is over its limit of one queued or running (unless the first already ended).
    let res = create(addr, &form("6"), Some(("reviews.jsonl", &data)), Some(&cookie), false).await;
    if res.status() != 201 {
        assert_eq!(res.status(), 429);
        assert!(res.text().await.unwrap().contains("the limit is 1"));
    }

    let (status, jobs) = events(addr, &id, Some(&cookie)).await;
    assert_eq!(status, 200);
    let last = jobs.last().unwrap();
    assert_eq!(last["status"], "done", "{last}");
    assert_eq!((last["examples"].as_u64(), last["held_out"].as_u64()), (Some(16), Some(4)));
    let progress = last["progress"].as_array().unwrap();
    let steps: Vec<u64> = progress.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5, 6], "a point before training, then one per step");
    assert!(progress[0]["eval_loss"].as_f64().is_some() && progress[6]["eval_loss"].as_f64().is_some());
    assert!(progress[1..].iter().all(|p| p["loss"].as_f64().is_some_and(f64::is_finite)));
    let score = &last["score"];
    assert_eq!((score["metric"].as_str(), score["n"].as_u64()), (Some("exact match"), Some(4)));
    assert!((0.0..=100.0).contains(&score["adapter"].as_f64().unwrap()));

    // The engine serves it by its id; the folder has a PEFT adapter and the record of its training.
    let folder = dir.path().join(&id);
    for f in ["adapter_config.json", "adapter_model.safetensors", "training.json"] {
        assert!(folder.join(f).is_file(), "{f}");
    }
    let reply = common::post(
        &st,
        &Default::default(),
        "/generate",
        serde_json::json!({"inputs": "Review: good. Sentiment:", "parameters": {"adapter_id": format!("trained/{id}"), "max_new_tokens": 3}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // The download is the folder's files, under one folder, byte for byte.
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/train/{id}/adapter.zip"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/zip");
    let bytes = res.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().to_string()).collect();
    names.sort();
    let top = format!("loraland-{id}");
    assert_eq!(
        names,
        [
            format!("{top}/adapter_config.json"),
            format!("{top}/adapter_model.safetensors"),
            format!("{top}/training.json")
        ]
    );
    let mut weights = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name(&format!("{top}/adapter_model.safetensors")).unwrap(), &mut weights)
        .unwrap();
    assert_eq!(weights, std::fs::read(folder.join("adapter_model.safetensors")).unwrap());

    // Another visitor sees nothing of it until it is published.
    let (status, _) = events(addr, &id, None).await;
    assert_eq!(status, 404);
    let res = reqwest::get(format!("http://{addr}/train/{id}/adapter.zip")).await.unwrap();
    assert_eq!(res.status(), 404);
    let res = server_fn(addr, "publish_job", &format!("id={id}&published=true"), "loraland_session=someone-else").await;
    assert_eq!(res.status(), 403, "only its session publishes it");
    let res = server_fn(addr, "publish_job", &format!("id={id}&published=true"), &cookie).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let (status, jobs) = events(addr, &id, None).await;
    assert_eq!((status, jobs.len(), jobs[0]["mine"].as_bool()), (200, 1, Some(false)));

    // A web run may use it in a pane only for its own session (or once published, as now).
    let run = |cookie: Option<String>| {
        let id = id.clone();
        async move {
            let body = serde_json::json!({"request": {
                "task": "glue_sst2", "inputs": {"sentence": "a fine film"},
                "params": {"max_new_tokens": 2, "temperature": 0.0, "top_p": 1.0, "seed": 0},
                "panes": [format!("trained/{id}"), null],
            }});
            let mut req = reqwest::Client::new().post(format!("http://{addr}/api/start_run")).json(&body);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, text) = run(Some(cookie.clone())).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(run(None).await.0, 200, "published: anyone's");
    let res = server_fn(addr, "publish_job", &format!("id={id}&published=false"), &cookie).await;
    assert_eq!(res.status(), 200);
    let (status, text) = run(None).await;
    assert_eq!(status, 422);
    assert!(text.contains("neither a finished adapter of your own nor a published one"), "{text}");

    // Deleting it takes the adapter with it.
    let res = server_fn(addr, "delete_job", &format!("id={id}"), &cookie).await;
    assert_eq!(res.status(), 200);
    assert!(!folder.exists());
    assert_eq!(events(addr, &id, Some(&cookie)).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_limits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = live(dir.path()).await;
    let error = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string())
    };
    let bad = format!("{}\n{{\"prompt\": 1", examples());
    let (status, message) = error(create(addr, &form("3"), Some(("x.jsonl", &bad)), None, false).await).await;
    assert_eq!(status, 422);
    assert!(message.starts_with("line 21: not a JSON object"), "{message}");
    let (status, message) = error(create(addr, &form("501"), Some(("x.jsonl", &examples())), None, false).await).await;
    assert_eq!((status, message.as_str()), (422, "steps must be from 1 to 500"));
    let (status, message) = error(create(addr, &form("3"), None, None, false).await).await;
    assert_eq!(status, 422);
    assert!(message.starts_with("choose a file"), "{message}");
    let mut synthetic = form("3");
    synthetic[2].1 = "synthetic".into();
    let (status, message) = error(create(addr, &synthetic, None, None, false).await).await;
    assert_eq!(status, 422);
    assert!(message.contains("no synthetic data"), "{message}");
    let big = "x".repeat(65 << 10);
    let (status, message) = error(create(addr, &form("3"), Some(("x.jsonl", &big)), None, false).await).await;
    assert_eq!((status, message.as_str()), (413, "the file is larger than the limit of 64 KiB"));
    let many =
        (0..201).map(|i| format!("{{\"prompt\": \"p{i}\", \"completion\": \"c\"}}")).collect::<Vec<_>>().join("\n");
    let (status, message) = error(create(addr, &form("3"), Some(("x.jsonl", &many)), None, false).await).await;
    assert_eq!((status, message.as_str()), (422, "more than 200 examples: the limit is 200 per job"));
    // A browser is sent back to the form with the message.
    let res = create(addr, &form("0"), Some(("x.jsonl", &examples())), None, true).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/train?error=steps+must+be+from+1+to+500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_queue_has_a_limit_of_its_own() {
    // No worker takes the jobs, so they stay queued: two visitors fill a queue of two, a third waits outside.
    let dir = tempfile::tempdir().unwrap();
    let limits = TrainSettings { workers: 0, max_queued: 2, jobs_per_session: 5, kept_per_session: 1, ..settings() };
    let (addr, _) = live_with(dir.path(), limits).await;
    let error = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string())
    };
    for visitor in 0..2 {
        let res = create(addr, &form("3"), Some(("x.jsonl", &examples())), None, false).await;
        assert_eq!(res.status(), 201);
        if visitor == 0 {
            // The same visitor again: over what one session may keep, whatever the queue.
            let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
            let res = create(addr, &form("3"), Some(("x.jsonl", &examples())), Some(&cookie), false).await;
            let (status, message) = error(res).await;
            assert_eq!(status, 429);
            assert_eq!(message, "you keep 1 training jobs (the limit is 1); delete one to train another");
        }
    }
    let res = create(addr, &form("3"), Some(("x.jsonl", &examples())), None, false).await;
    let (status, message) = error(res).await;
    assert_eq!(status, 503);
    assert_eq!(message, "the training queue is full (2 jobs waiting); try again in a few minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_and_can_be_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, st) = live(dir.path()).await;
    let res = create(addr, &form("500"), Some(("x.jsonl", &examples())), None, false).await;
    assert_eq!(res.status(), 201);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let load = || async { app::train::store::load(&st.db, &id, None).await.unwrap().unwrap().0 };
    while load().await.progress.len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = server_fn(addr, "cancel_job", &format!("id={id}"), &cookie).await;
    assert_eq!(res.status(), 200);
    let (_, jobs) = events(addr, &id, Some(&cookie)).await;
    assert_eq!(jobs.last().unwrap()["status"], "cancelled");
    // The worker stops at its next step: the curve stops growing.
    let stopped = load().await.progress.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = load().await;
    assert!(after.progress.len() <= stopped + 1 && after.progress.len() < 501, "{} points", after.progress.len());
    assert!(!dir.path().join(&id).exists(), "no adapter for a cancelled job");
    let res = server_fn(addr, "cancel_job", &format!("id={id}"), &cookie).await;
    assert_eq!(res.status(), 409, "a cancelled job is not cancelled twice");

    // Started again: from the first step.
    let res = server_fn(addr, "restart_job", &format!("id={id}"), &cookie).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    loop {
        let job = load().await;
        if job.status == app::train::JobStatus::Running && !job.progress.is_empty() {
            assert_eq!(job.progress[0].step, 0, "the curve begins again");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server_fn(addr, "cancel_job", &format!("id={id}"), &cookie).await;
}
