//! The HTTP side of training jobs: `POST /train/jobs` (the Train page's multipart form: it works without
//! JavaScript, and answers a browser with a redirect to the job's page, any other client with JSON),
//! `GET /train/{id}/events` (the job as server-sent events, one JSON [`JobEvent`] each time it changes, then
//! `event: end`), and `GET /train/{id}/adapter.zip` (the finished adapter as a PEFT folder).

use super::store::{self, NewJob};
use super::types::{DataSource, JobEvent, JobView, TrainParams};
use super::upload;
use super::worker::TrainSettings;
use crate::context::{ClientAddr, Refusal};
use crate::state::AppState;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

/// How often an open events stream reads its job's row.
pub const EVENTS_EVERY: Duration = Duration::from_millis(400);

/// The form's fields.
#[derive(Debug, Default)]
struct Form {
    name: String,
    task: String,
    source: String,
    file: Option<(String, Vec<u8>)>,
    params: TrainParams,
    targets: Vec<String>,
}

fn number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, Refusal> {
    value.trim().parse().map_err(|_| Refusal::invalid(format!("`{field}` must be a number, not {value:?}")))
}

/// Reads the multipart form; a file over the limit is refused as it streams in.
async fn read_form(mut form: Multipart, max_upload: usize) -> Result<Form, Refusal> {
    let bad = |e: axum::extract::multipart::MultipartError| Refusal::invalid(format!("cannot read the form: {e}"));
    let mut out = Form::default();
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = field.file_name().unwrap_or_default().to_string();
            let mut bytes = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                if bytes.len() + chunk.len() > max_upload {
                    return Err(Refusal::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the file is larger than the limit of {} KiB", max_upload >> 10),
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            if !file_name.is_empty() || !bytes.is_empty() {
                out.file = Some((file_name, bytes));
            }
            continue;
        }
        let value = field.text().await.map_err(bad)?;
        match name.as_str() {
            "name" => out.name = value.trim().chars().take(80).collect(),
            "task" => out.task = value,
            "source" => out.source = value,
            "steps" => out.params.steps = number("steps", &value)?,
            "rank" => out.params.rank = number("rank", &value)?,
            "alpha" => out.params.alpha = number("alpha", &value)?,
            "lr" => out.params.lr = number("lr", &value)?,
            "batch" => out.params.batch = number("batch", &value)?,
            "targets" => out.targets.push(value),
            other => return Err(Refusal::invalid(format!("unknown field `{other}`"))),
        }
    }
    out.params.targets = std::mem::take(&mut out.targets);
    Ok(out)
}

/// Checks the form and stores the job for this visitor's session (made now if need be); returns its id and the
/// cookie to set.
async fn create(
    state: &AppState,
    headers: &HeaderMap,
    addr: ClientAddr,
    form: Multipart,
) -> Result<(String, Option<HeaderValue>), Refusal> {
    let training = state
        .training
        .as_ref()
        .ok_or_else(|| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "training is not available on this server"))?;
    let settings = training.settings();
    let form = read_form(form, settings.max_upload_bytes).await?;
    let task = catalog::task(&form.task).ok_or_else(|| Refusal::invalid(format!("unknown task `{}`", form.task)))?;
    form.params.check(settings.max_steps).map_err(Refusal::invalid)?;
    let source =
        DataSource::parse(&form.source).ok_or_else(|| Refusal::invalid("`source` must be `synthetic` or `upload`"))?;
    let mut job = NewJob {
        name: if form.name.is_empty() { format!("{} adapter", task.name) } else { form.name.clone() },
        task: task.id.clone(),
        source,
        data: None,
        params: form.params.clone(),
        examples: 0,
        held_out: 0,
        skipped: Vec::new(),
    };
    match source {
        DataSource::Upload => {
            let Some((name, bytes)) = &form.file else {
                return Err(Refusal::invalid("choose a file to upload, or train on the task's synthetic data"));
            };
            let parsed = upload::parse(task, name, bytes, settings.max_examples).map_err(Refusal::invalid)?;
            let (train, held) = super::worker::split_held_out(parsed.examples.clone(), settings.held_out);
            (job.examples, job.held_out) = (train.len(), held.len());
            job.skipped = parsed.reasons.clone();
            if parsed.skipped > parsed.reasons.len() {
                job.skipped.push(format!("… {} rows skipped in all", parsed.skipped));
            }
            job.data = Some(parsed.examples);
        }
        DataSource::Synthetic => {
            // Made when the job starts; refused now if this server has none for the task.
            training.lab().synthetic(&task.id, 1, 1, 0).map_err(|e| Refusal::invalid(e.to_string()))?;
        }
    }
    let (session, cookie) = crate::session::of_headers_or_new(state, headers, addr).await?;
    room_for(&state.db, settings, &session, false).await?;
    let id = store::insert(&state.db, &session, &job).await.map_err(Refusal::database)?;
    training.wake();
    Ok((id, cookie))
}

/// Whether `session` may queue one more job: its own limits (`--train-jobs-per-session` queued or running,
/// `--train-kept-per-session` in all, so that one visitor cannot fill the disk with adapters) and the server's
/// queue (`--train-max-queued`, so that many sessions cannot line up hours of work in front of everyone).
/// `restarting`: the job is one the session keeps already.
pub(crate) async fn room_for(
    db: &crate::db::Db,
    settings: &TrainSettings,
    session: &str,
    restarting: bool,
) -> Result<(), Refusal> {
    let kept = store::kept_by(db, session).await.map_err(Refusal::database)?;
    if !restarting && kept as usize >= settings.kept_per_session {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "you keep {kept} training jobs (the limit is {}); delete one to train another",
                settings.kept_per_session
            ),
        ));
    }
    let active = store::active_of(db, session).await.map_err(Refusal::database)?;
    if active as usize >= settings.jobs_per_session {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "you have {active} training jobs queued or running (the limit is {}); wait for one to finish or \
                 cancel one",
                settings.jobs_per_session
            ),
        ));
    }
    let queued = store::queued(db).await.map_err(Refusal::database)?;
    if queued as usize >= settings.max_queued {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the training queue is full ({queued} jobs waiting); try again in a few minutes"),
        ));
    }
    Ok(())
}

/// `POST /train/jobs`.
pub async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: Option<axum::Extension<ClientAddr>>,
    form: Multipart,
) -> Response {
    let addr = addr.map_or(ClientAddr(std::net::IpAddr::from([0, 0, 0, 0])), |axum::Extension(a)| a);
    let browser = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    let created = create(&state, &headers, addr, form).await;
    let mut response = match (&created, browser) {
        (Ok((id, _)), true) => redirect(&format!("/train/{id}")),
        (Ok((id, _)), false) => {
            (StatusCode::CREATED, axum::Json(serde_json::json!({ "id": id, "adapter": super::adapter_id(id) })))
                .into_response()
        }
        (Err(r), true) => {
            let query = serde_urlencoded::to_string([("error", r.message.as_str())]).unwrap_or_default();
            redirect(&format!("/train?{query}"))
        }
        (Err(r), false) => (r.status, axum::Json(serde_json::json!({ "error": r.message }))).into_response(),
    };
    if let Ok((_, Some(cookie))) = created {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// Job `id` as the requester sees it (its own, or published), or the response that refuses it.
async fn visible_job(state: &AppState, headers: &HeaderMap, id: &str) -> Result<(JobView, Option<String>), Response> {
    let session = crate::session::from_headers(&state.db, headers).await.ok().flatten();
    match store::visible(&state.db, id, session.as_deref()).await {
        Ok(Some(job)) => Ok((job, session)),
        Ok(None) => Err((StatusCode::NOT_FOUND, "no such training job").into_response()),
        Err(e) => Err(Refusal::database(e).into_response()),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// `GET /train/{id}/events`: the job now, then each time its row changes (read every [`EVENTS_EVERY`], so a job
/// another replica trains is followed the same way), until it ends.
pub async fn job_events(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let (job, session) = match visible_job(&state, &headers, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let events = stream::unfold(Some((job, true)), move |last| {
        let (state, id, session) = (state.clone(), id.clone(), session.clone());
        async move {
            let (mut last, first) = last?;
            if first {
                let next = (!last.status.is_final()).then(|| (last.clone(), false));
                return Some((JobEvent { job: last }, next));
            }
            loop {
                tokio::time::sleep(EVENTS_EVERY).await;
                let job = match store::load(&state.db, &id, session.as_deref()).await {
                    Ok(Some((job, _))) => job,
                    // Deleted, or the database failed: the stream ends.
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!("following training job {id}: {e}");
                        return None;
                    }
                };
                if job != last {
                    let next = (!job.status.is_final()).then(|| (job.clone(), false));
                    return Some((JobEvent { job }, next));
                }
                last = job;
            }
        }
    })
    .map(|event| Ok::<_, Infallible>(SseEvent::default().data(serde_json::to_string(&event).unwrap_or_default())));
    let end = stream::once(async { Ok(SseEvent::default().event("end").data("{}")) });
    Sse::new(events.chain(end)).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /train/{id}/adapter.zip`: a done job's adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
/// `training.json`) in a zip, under a folder named for the adapter, as `PeftModel.from_pretrained` reads it.
pub async fn download(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let (job, _) = match visible_job(&state, &headers, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(training) = state.training.clone() else {
        return Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "training is not available on this server")
            .into_response();
    };
    let dir = training.adapter_dir(&id);
    if job.status != super::JobStatus::Done || !super::worker::is_adapter(&dir) {
        let message = format!("the job is {}: only a finished job has an adapter", job.status.as_str());
        return Refusal::new(StatusCode::CONFLICT, message).into_response();
    }
    let folder = format!("loraland-{id}");
    let zipped = tokio::task::spawn_blocking(move || zip_folder(&dir, &folder)).await;
    match zipped {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/zip".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"loraland-{id}.zip\"")),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!("zipping the adapter of job {id}: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the server could not read the adapter").into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The files of `dir` (not its sub-folders) as a zip under `folder/`.
pub fn zip_folder(dir: &std::path::Path, folder: &str) -> anyhow::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
    let mut names: Vec<_> = std::fs::read_dir(dir)?.flatten().filter(|e| e.path().is_file()).collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        zip.start_file(format!("{folder}/{}", entry.file_name().to_string_lossy()), options)?;
        zip.write_all(&std::fs::read(entry.path())?)?;
    }
    Ok(zip.finish()?.into_inner())
}
