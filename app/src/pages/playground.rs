//! `/a/:adapter`: one task's adapter beside the base model. One input per template variable, example chips, a live
//! preview of the rendered prompt with its token count, generation parameters, and Run, which stores the run and
//! streams both answers side by side (server-sent events); Stop cancels both.

use crate::api::{count_tokens, start_run, stop_run, PaneStatus, RunParams, RunRequest, MAX_APP_NEW_TOKENS};
use crate::components::{EventStream, Pane, PaneLabel, PaneState};
use catalog::Task;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use std::collections::BTreeMap;

/// The playground page.
#[component]
pub fn Playground() -> AnyView {
    let params = use_params_map();
    let id = params.read_untracked().get("adapter").unwrap_or_default();
    match catalog::task(&id) {
        Some(task) => view! { <TaskPlayground task panes=panes_of(task)/> }.into_any(),
        None => view! { <crate::pages::NotFound/> }.into_any(),
    }
}

/// A pane to run: what it shows and which adapter answers in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaneSpec {
    /// Heading and model id shown.
    pub label: PaneLabel,
    /// The adapter, `None` for the base model.
    pub adapter: Option<String>,
}

impl PaneSpec {
    /// The pane of a catalog task's adapter.
    pub fn task(task: &Task) -> Self {
        let label = PaneLabel { title: task.name.clone(), model: task.adapters.embedded.clone() };
        Self { label, adapter: Some(task.adapters.embedded.clone()) }
    }

    /// The pane of an adapter trained on the Train page (`trained/<job>`).
    pub fn trained(adapter: &str) -> Self {
        let label = PaneLabel { title: "Trained adapter".into(), model: adapter.to_string() };
        Self { label, adapter: Some(adapter.to_string()) }
    }

    /// The base model's pane.
    pub fn base() -> Self {
        Self { label: PaneLabel { title: "Base model".into(), model: "base".into() }, adapter: None }
    }
}

/// What a task's output constraint allows, in a few words for the form.
fn constraint_label(c: &catalog::OutputConstraint) -> String {
    match c {
        catalog::OutputConstraint::Choice(labels) if labels.len() <= 6 => labels.join(" / "),
        catalog::OutputConstraint::Choice(labels) => format!("one of {} labels", labels.len()),
        catalog::OutputConstraint::Regex(rx) => format!("text matching {rx}"),
        catalog::OutputConstraint::JsonSchema(_) => "JSON of the task's schema".into(),
    }
}

/// The panes of a task's playground: its adapter, then the base model.
pub fn panes_of(task: &Task) -> Vec<PaneSpec> {
    vec![PaneSpec::task(task), PaneSpec::base()]
}

/// The inputs, parameters and answer panes of one task's template, run through `panes`. Used by the playground
/// and the compare page. Without JavaScript the form posts to `run_form`, which answers with the finished run.
#[component]
pub fn TaskPlayground(task: &'static Task, panes: Vec<PaneSpec>) -> AnyView {
    let specs = panes;
    let first: BTreeMap<String, String> = task.examples[0].clone();
    let values = RwSignal::new(first);
    let max_new_tokens = RwSignal::new(RunParams::default().max_new_tokens);
    let temperature = RwSignal::new(RunParams::default().temperature);
    let top_p = RwSignal::new(RunParams::default().top_p);
    let seed = RwSignal::new(RunParams::default().seed);
    let constrained = RwSignal::new(RunParams::default().constrained);
    let prompt = Memo::new(move |_| values.with(|v| catalog::render(&task.template, v)));
    let tokens = Resource::new(
        move || prompt.get().ok(),
        |p| async move {
            match p {
                Some(p) => count_tokens(p).await.map(Some),
                None => Ok(None),
            }
        },
    );
    let panes: Vec<PaneState> = specs.iter().map(|_| PaneState::new()).collect();
    let adapters: Vec<Option<String>> = specs.iter().map(|s| s.adapter.clone()).collect();
    let running = RwSignal::new(false);
    let run_id = RwSignal::new(None::<String>);
    let error = RwSignal::new(None::<String>);
    let stream = EventStream::default();

    let run = {
        let panes = panes.clone();
        let adapters = adapters.clone();
        let stream = stream.clone();
        move || {
            let request = RunRequest {
                task: task.id.clone(),
                inputs: values.get_untracked(),
                params: RunParams {
                    max_new_tokens: max_new_tokens.get_untracked(),
                    temperature: temperature.get_untracked(),
                    top_p: top_p.get_untracked(),
                    seed: seed.get_untracked(),
                    constrained: constrained.get_untracked(),
                },
                panes: adapters.clone(),
            };
            error.set(None);
            running.set(true);
            panes.iter().for_each(PaneState::reset);
            let panes = panes.clone();
            let stream = stream.clone();
            leptos::task::spawn_local(async move {
                match start_run(request).await {
                    Ok(id) => {
                        run_id.set(Some(id.clone()));
                        open_run_stream(&stream, &id, panes, move || running.set(false));
                    }
                    Err(e) => {
                        error.set(Some(e.to_string()));
                        running.set(false);
                        panes.iter().for_each(|p| p.status.set(PaneStatus::Pending));
                    }
                }
            });
        }
    };
    let stop = {
        let panes = panes.clone();
        let stream = stream.clone();
        move || {
            stream.close();
            running.set(false);
            panes.iter().for_each(PaneState::stop);
            // The server ends the run's generations as cancelled, with their text so far.
            if let Some(id) = run_id.get_untracked() {
                leptos::task::spawn_local(async move {
                    let _ = stop_run(id).await;
                });
            }
        }
    };

    view! {
        <section class="panel">
            <p class="muted"><a href="/">"All adapters"</a> " / " {task.category.clone()}</p>
            <h1>{task.name.clone()}</h1>
            <p>{task.description.clone()}</p>
            <p class="muted">
                "Metric: " {task.metric.clone()} " · Output: " {task.output_format.clone()}
                " · Adapter: " <code>{task.adapters.embedded.clone()}</code>
                " (Mistral-7B: " <code>{task.adapters.mistral_7b.clone()}</code> ")"
            </p>
            <p class="muted" id="adapter-provenance">
                "The embedded model's adapter is a demo: trained by " <code>"loraland train"</code>
                " on synthetic data in this task's template, not on the task's real dataset."
            </p>
        </section>
        <form class="panel playground" aria-labelledby="inputs-title" method="post" action="/api/run_form">
            <h2 id="inputs-title">"Inputs"</h2>
            <input type="hidden" name="task" value=task.id.clone()/>
            {adapters.iter().enumerate().map(|(i, a)| view! {
                <input type="hidden" name=format!("panes[{i}]") value=a.clone().unwrap_or_else(|| "base".into())/>
            }).collect_view()}
            <div class="chips" role="group" aria-label="Example inputs">
                {task.examples.iter().enumerate().map(|(i, ex)| {
                    let ex = ex.clone();
                    view! {
                        <button type="button" class="chip" on:click=move |_| values.set(ex.clone())>
                            {format!("Example {}", i + 1)}
                        </button>
                    }
                }).collect_view()}
            </div>
            {task.variables.iter().map(|name| {
                let key = name.clone();
                let key2 = name.clone();
                let input_id = format!("var-{name}");
                // Rendered as text too, so that the form posts it without JavaScript.
                let initial = task.examples[0].get(name).cloned().unwrap_or_default();
                view! {
                    <label class="field" for=input_id.clone()>
                        <span>{name.clone()}</span>
                        <textarea
                            id=input_id.clone()
                            name=format!("inputs[{name}]")
                            rows="3"
                            prop:value=move || values.with(|v| v.get(&key).cloned().unwrap_or_default())
                            on:input=move |ev| {
                                let value = event_target_value(&ev);
                                values.update(|v| { v.insert(key2.clone(), value); });
                            }
                        >{initial}</textarea>
                    </label>
                }
            }).collect_view()}
            <details class="preview" open>
                <summary>
                    "Prompt preview "
                    <span id="token-count" class="muted">
                        <Suspense fallback=|| "(counting tokens…)">
                            {move || tokens.get().map(|t| match t {
                                Ok(Some(n)) => format!("({n} tokens)"),
                                Ok(None) => String::new(),
                                Err(e) => format!("({e})"),
                            })}
                        </Suspense>
                    </span>
                </summary>
                <pre id="prompt-preview">{move || match prompt.get() {
                    Ok(p) => p,
                    Err(e) => e.to_string(),
                }}</pre>
            </details>
            <fieldset class="params">
                <legend>"Generation"</legend>
                <label for="max-new-tokens">"Max new tokens"
                    <input id="max-new-tokens" name="max_new_tokens" type="number" min="1" max=MAX_APP_NEW_TOKENS
                        value=max_new_tokens.get_untracked().to_string()
                        prop:value=move || max_new_tokens.get().to_string()
                        on:input=move |ev| max_new_tokens.set(event_target_value(&ev).parse().unwrap_or(0))/>
                </label>
                <label for="temperature">"Temperature"
                    <input id="temperature" name="temperature" type="number" min="0" max="2" step="any"
                        value=temperature.get_untracked().to_string()
                        prop:value=move || temperature.get().to_string()
                        on:input=move |ev| temperature.set(event_target_value(&ev).parse().unwrap_or(-1.0))/>
                </label>
                <label for="top-p">"Top-p"
                    <input id="top-p" name="top_p" type="number" min="0.01" max="1" step="any"
                        value=top_p.get_untracked().to_string()
                        prop:value=move || top_p.get().to_string()
                        on:input=move |ev| top_p.set(event_target_value(&ev).parse().unwrap_or(0.0))/>
                </label>
                <label for="seed">"Seed"
                    <input id="seed" name="seed" type="number" min="0"
                        value=seed.get_untracked().to_string()
                        prop:value=move || seed.get().to_string()
                        on:input=move |ev| seed.set(event_target_value(&ev).parse().unwrap_or(0))/>
                </label>
                {task.constraint.as_ref().map(|c| view! {
                    <label for="constrained" class="constrain">
                        <input id="constrained" name="constrained" type="checkbox"
                            prop:checked=move || constrained.get()
                            on:change=move |ev| constrained.set(event_target_checked(&ev))/>
                        "Constrain the base model to the task's output format: " {constraint_label(c)}
                    </label>
                })}
            </fieldset>
            <div class="actions">
                // With JavaScript the click streams the run here (the router would otherwise take the submit);
                // without it, the button submits the form and the server answers with the finished run.
                <button id="run" type="submit" class="button primary" disabled=move || running.get()
                    on:click={let run = run.clone(); move |ev: leptos::ev::MouseEvent| { ev.prevent_default(); run() }}>
                    "Run"
                </button>
                <button id="stop" type="button" class="button" disabled=move || !running.get()
                    on:click=move |_| stop()>"Stop"</button>
                {move || run_id.get().map(|id| view! {
                    <a id="run-link" href=format!("/r/{id}")>"Link to this run"</a>
                })}
            </div>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </form>
        <section class="panes" aria-label="Answers">
            {specs.into_iter().zip(panes.clone()).enumerate().map(|(i, (spec, state))| {
                view! { <Pane index=i label=spec.label state/> }
            }).collect_view()}
        </section>
    }
    .into_any()
}

/// Follows run `id` (`/runs/{id}/stream`): its events go to the panes, and `on_end` runs once every pane has
/// finished or the connection failed. The browser would reconnect after an error; a run is not resumed that way,
/// so a pane that had not finished says so instead of looking as if it were still running.
fn open_run_stream(stream: &EventStream, id: &str, panes: Vec<PaneState>, on_end: impl Fn() + 'static) {
    let message_panes = panes.clone();
    let on_event = move |data: &str| {
        let Ok(event) = serde_json::from_str::<crate::api::PaneEvent>(data) else { return };
        if let Some(p) = usize::try_from(event.pane()).ok().and_then(|i| message_panes.get(i)) {
            p.apply(&event);
        }
    };
    let on_end = std::rc::Rc::new(on_end);
    let on_close = {
        let on_end = on_end.clone();
        move |name: &'static str| {
            if name == "error" {
                panes.iter().for_each(PaneState::lose_connection);
            }
            on_end();
        }
    };
    if !stream.open(&format!("/runs/{id}/stream"), on_event, &["end", "error"], on_close) && cfg!(feature = "hydrate") {
        on_end();
    }
}
