//! `/train`: fine-tune an adapter from the browser. The form (a plain multipart POST to `/train/jobs`, so it works
//! without JavaScript) picks a catalog task and its data (the task's synthetic data, or an upload filled into the
//! task's exact template), with the demo adapters' settings as defaults; below it, this session's jobs.
//! `/train/:id`: one job, its loss curve live (server-sent events from `/train/{id}/events`), its held-out score
//! when done, and what its owner can do with it: cancel, start again, publish, download, compare, delete.

use crate::api::{get_job, list_jobs, train_info, CancelJob, DeleteJob, PublishJob, RestartJob};
use crate::components::{EventStream, LossChart};
use crate::pages::run::format_time;
use crate::train::{JobStatus, JobView, Point, TARGET_MODULES};
use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};

/// The Train page.
#[component]
pub fn Train() -> AnyView {
    let query = use_query_map();
    let error = query.with_untracked(|q| q.get("error"));
    let info = Resource::new(|| (), |_| train_info());
    let jobs = Resource::new(|| (), |_| list_jobs());
    view! {
        <section class="panel">
            <h1>"Train an adapter"</h1>
            <p>
                "Fine-tune a LoRA adapter of the base model on one task's examples, watch its loss fall, then "
                "compare it with the base model on the task's held-out examples and in the playground."
            </p>
            {error.map(|e| view! { <p class="error" role="alert" id="train-error">{e}</p> })}
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || info.get().map(|i| match i {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(i) if !i.available => view! { <p class="error">"Training is not available on this server."</p> }.into_any(),
                    Ok(i) => view! { <TrainForm info=i/> }.into_any(),
                })}
            </Suspense>
        </section>
        <section class="panel" aria-labelledby="jobs-title">
            <h2 id="jobs-title">"Your training jobs"</h2>
            <Suspense fallback=|| ()>
                {move || jobs.get().map(|j| match j {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(j) if j.is_empty() => view! { <p class="muted" id="no-jobs">"No jobs yet."</p> }.into_any(),
                    Ok(j) => view! {
                        <ol class="history" id="jobs">
                            {j.into_iter().map(|job| view! {
                                <li data-status=job.status.as_str()>
                                    <a href=format!("/train/{}", job.id)>{job.name.clone()}</a>
                                    <span class="muted">{format!(" · {} · {} · {}", task_name(&job.task), job.status.as_str(), format_time(job.created_at))}</span>
                                </li>
                            }).collect_view()}
                        </ol>
                    }.into_any(),
                })}
            </Suspense>
        </section>
    }
    .into_any()
}

fn task_name(id: &str) -> String {
    catalog::task(id).map_or_else(|| id.to_string(), |t| t.name.clone())
}

#[component]
fn TrainForm(info: crate::api::TrainOffer) -> AnyView {
    let d = info.defaults.clone();
    let number =
        |id: &'static str, label: &'static str, value: String, min: &'static str, max: String, step: &'static str| {
            view! {
                <label for=id>{label}
                    <input id=id name=id type="number" min=min max=max step=step value=value required/>
                </label>
            }
        };
    view! {
        <form class="train-form" method="post" action="/train/jobs" enctype="multipart/form-data">
            <label class="field" for="train-name"><span>"Name"</span>
                <input id="train-name" name="name" type="text" maxlength="80" placeholder="my sentiment adapter"/>
            </label>
            <label class="field" for="train-task"><span>"Task (its prompt template)"</span>
                <select id="train-task" name="task">
                    {catalog::tasks().iter().map(|t| view! {
                        <option value=t.id.clone() selected=t.id == "glue_sst2">{t.name.clone()}</option>
                    }).collect_view()}
                </select>
            </label>
            <fieldset class="params">
                <legend>"Examples"</legend>
                <label for="source-upload">
                    <input id="source-upload" type="radio" name="source" value="upload" checked=!info.synthetic/>
                    "Upload a file"
                </label>
                <label for="source-synthetic">
                    <input id="source-synthetic" type="radio" name="source" value="synthetic" checked=info.synthetic disabled=!info.synthetic/>
                    "The task's synthetic data (as the demo adapters were trained)"
                </label>
                <label for="train-file">"File"
                    <input id="train-file" name="file" type="file" accept=".jsonl,.json,.ndjson,.csv,text/csv,application/json"/>
                </label>
                <p class="muted">
                    "JSONL of " <code>"{\"prompt\": …, \"completion\": …}"</code> ", or CSV/JSONL rows with the "
                    "task's template variables and an " <code>"answer"</code> " column, filled into the task's exact "
                    "template. At most " {info.max_upload_kib} " KiB and " {info.max_examples} " examples; the last "
                    "fifth (up to 32) is held out for scoring."
                </p>
            </fieldset>
            <fieldset class="params">
                <legend>"Training"</legend>
                {number("steps", "Steps", d.steps.to_string(), "1", info.max_steps.to_string(), "1")}
                {number("rank", "Rank", d.rank.to_string(), "1", "64".into(), "1")}
                {number("alpha", "Alpha", d.alpha.to_string(), "0", "1024".into(), "any")}
                {number("lr", "Learning rate", d.lr.to_string(), "0", "0.1".into(), "any")}
                {number("batch", "Batch", d.batch.to_string(), "1", "32".into(), "1")}
            </fieldset>
            <fieldset class="params">
                <legend>"Target modules"</legend>
                {TARGET_MODULES.iter().map(|m| {
                    let (id, for_id) = (format!("target-{m}"), format!("target-{m}"));
                    view! {
                        <label for=for_id>
                            <input id=id type="checkbox" name="targets" value=*m checked=d.targets.iter().any(|t| t == m)/>
                            {*m}
                        </label>
                    }
                }).collect_view()}
            </fieldset>
            <div class="actions">
                <button id="train" class="button primary" type="submit">"Train"</button>
                <span class="muted">{format!("At most {} jobs queued or running per visitor.", info.jobs_per_session)}</span>
            </div>
        </form>
    }
    .into_any()
}

/// One job's page.
#[component]
pub fn JobPage() -> AnyView {
    let params = use_params_map();
    let id = move || params.read().get("id").unwrap_or_default();
    let cancel = ServerAction::<CancelJob>::new();
    let restart = ServerAction::<RestartJob>::new();
    let publish = ServerAction::<PublishJob>::new();
    let delete = ServerAction::<DeleteJob>::new();
    let stored = Resource::new(
        move || (id(), cancel.version().get(), restart.version().get(), publish.version().get()),
        |(id, ..)| get_job(id),
    );
    let live = RwSignal::new(None::<JobView>);
    let stream = EventStream::default();
    // Each time the stored job is read (first load, after an action), follow `/train/{id}/events` until the job
    // ends (its `end` event); after an error the browser reconnects, and the job's row is read again.
    Effect::new({
        let stream = stream.clone();
        move |_| {
            live.set(None);
            if let Some(Ok(Some(job))) = stored.get() {
                if !job.status.is_final() {
                    let on_event = move |data: &str| {
                        if let Ok(event) = serde_json::from_str::<crate::train::JobEvent>(data) {
                            live.set(Some(event.job));
                        }
                    };
                    stream.open(&format!("/train/{}/events", job.id), on_event, &["end"], |_| {});
                }
            }
        }
    });
    on_cleanup({
        let stream = stream.clone();
        move || stream.close()
    });
    let errors = move || {
        [cancel.value().get(), restart.value().get(), publish.value().get(), delete.value().get()]
            .into_iter()
            .flatten()
            .find_map(|r| r.err())
            .map(|e| e.to_string())
    };
    let deleted = move || matches!(delete.value().get(), Some(Ok(())));
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading the job…"</p> }>
            {move || stored.get().map(|r| match r {
                Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                Ok(None) => view! { <crate::pages::NotFound/> }.into_any(),
                Ok(Some(_)) if deleted() => view! {
                    <section class="panel"><p id="job-deleted">"The job, its data and its adapter are deleted. "
                        <a href="/train">"Train another"</a></p></section>
                }.into_any(),
                Ok(Some(job)) => {
                    let job = Signal::derive(move || live.get().unwrap_or_else(|| job.clone()));
                    view! { <JobDetails job cancel restart publish delete/> }.into_any()
                }
            })}
        </Suspense>
        {move || errors().map(|e| view! { <p class="error panel" role="alert">{e}</p> })}
    }
    .into_any()
}

fn figure(x: Option<f32>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.4}"))
}

/// A duration in seconds for people.
fn seconds(s: f64) -> String {
    match s {
        s if s < 90.0 => format!("{s:.0} s"),
        s => format!("{:.0} min", s / 60.0),
    }
}

#[component]
fn JobDetails(
    job: Signal<JobView>,
    cancel: ServerAction<CancelJob>,
    restart: ServerAction<RestartJob>,
    publish: ServerAction<PublishJob>,
    delete: ServerAction<DeleteJob>,
) -> AnyView {
    let j = job.get_untracked();
    let (id, steps) = (j.id.clone(), j.params.steps);
    let status = move || job.with(|j| j.status);
    let last = move || job.with(|j| j.last().cloned());
    let held_loss = move || job.with(|j| j.progress.iter().rev().find_map(|p| p.eval_loss));
    let points = Signal::derive(move || job.with(|j| j.progress.clone()));
    let compare = format!("/compare?task={}&p1={}&p2=base", j.task, crate::train::adapter_id(&j.id));
    let progress_line = move || {
        let Some(Point { step, loss, tokens_per_s, eta_s, .. }) = last() else {
            return "Waiting for a training worker…".to_string();
        };
        let mut s = format!("Step {step} of {steps} · loss {} · held-out loss {}", figure(loss), figure(held_loss()));
        if step > 0 {
            s.push_str(&format!(" · {tokens_per_s:.0} tokens/s"));
        }
        if status() == JobStatus::Running && step > 0 {
            s.push_str(&format!(" · about {} left", seconds(eta_s)));
        }
        s
    };
    let action_id = StoredValue::new(id.clone());
    view! {
        <section class="panel" id="job" data-status=move || status().as_str()>
            <p class="muted"><a href="/train">"Train"</a> " / " {task_name(&j.task)}</p>
            <h1>{j.name.clone()}</h1>
            <p class="muted">
                "Adapter " <code id="adapter-id">{crate::train::adapter_id(&j.id)}</code>
                " · " {j.source.as_str()} " data · rank " {j.params.rank} ", alpha " {j.params.alpha}
                " on " {j.params.targets.join(", ")} " · learning rate " {j.params.lr} " · batch " {j.params.batch}
                " · " {format_time(j.created_at)}
            </p>
            <p id="job-status">
                <strong>{move || status().as_str()}</strong>
                {move || job.with(|j| j.error.clone()).map(|e| view! { ": " <span class="error" role="alert">{e}</span> })}
            </p>
            <p id="job-examples" class="muted">
                {move || job.with(|j| format!("{} training examples, {} held out.", j.examples, j.held_out))}
            </p>
            {(!j.skipped.is_empty()).then(|| view! {
                <details id="job-skipped"><summary>"Rows left out"</summary>
                    <ul>{j.skipped.iter().map(|s| view! { <li>{s.clone()}</li> }).collect_view()}</ul>
                </details>
            })}
            <p id="job-progress" aria-live="polite">{progress_line}</p>
            <LossChart points steps/>
            {move || job.with(|j| j.score.clone()).map(|s| view! {
                <table class="score" id="job-score">
                    <caption>{format!("Held-out score ({}, {} examples)", s.metric, s.n)}</caption>
                    <tr><th>"Base model"</th><td id="score-base">{format!("{:.1}", s.base)}</td></tr>
                    <tr><th>"This adapter"</th><td id="score-adapter">{format!("{:.1}", s.adapter)}</td></tr>
                </table>
            })}
            <div class="actions">
                {move || (status() == JobStatus::Done).then(|| view! {
                    <a class="button primary" id="compare-link" href=compare.clone()>"Compare with the base model"</a>
                    <a class="button" id="download-link" href=format!("/train/{}/adapter.zip", job.with_untracked(|j| j.id.clone())) rel="external" download>"Download (PEFT)"</a>
                })}
                {j.mine.then(|| view! {
                    {move || (!status().is_final()).then(|| view! {
                        <ActionForm action=cancel><input type="hidden" name="id" value=action_id.get_value()/><button id="cancel" class="button" type="submit">"Cancel"</button></ActionForm>
                    })}
                    {move || JobStatus::Queued.can_become_from(status()).then(|| view! {
                        <ActionForm action=restart><input type="hidden" name="id" value=action_id.get_value()/><button id="restart" class="button" type="submit">"Start again"</button></ActionForm>
                    })}
                    {move || (status() == JobStatus::Done).then(|| {
                        let published = job.with(|j| j.published);
                        view! {
                            <ActionForm action=publish>
                                <input type="hidden" name="id" value=action_id.get_value()/>
                                <input type="hidden" name="published" value=(!published).to_string()/>
                                <button id="publish" class="button" type="submit">
                                    {if published { "Unpublish" } else { "Publish to the gallery" }}
                                </button>
                            </ActionForm>
                        }
                    })}
                    {move || (status() != JobStatus::Running).then(|| view! {
                        <ActionForm action=delete><input type="hidden" name="id" value=action_id.get_value()/><button id="delete" class="button" type="submit">"Delete"</button></ActionForm>
                    })}
                })}
            </div>
        </section>
    }
    .into_any()
}
