//! The adapter gallery: the catalog's tasks grouped by category, filtered by text as the visitor types (or by the
//! `q` query parameter of a plain form submit without JavaScript).

use crate::api::{trained_adapters, win_rates, WinRate};
use crate::components::LossChart;
use crate::train::JobView;
use catalog::Task;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// Whether `task` matches the filter text (case-insensitive, over name, id, category and description).
pub fn matches(task: &Task, filter: &str) -> bool {
    let filter = filter.trim().to_lowercase();
    filter.is_empty()
        || [&task.name, &task.id, &task.category, &task.description]
            .iter()
            .any(|field| field.to_lowercase().contains(&filter))
}

/// The gallery.
#[component]
pub fn Gallery() -> AnyView {
    let query = use_query_map();
    let filter = RwSignal::new(query.with_untracked(|q| q.get("q").unwrap_or_default()));
    let shown = move || catalog::tasks().iter().filter(|t| filter.with(|f| matches(t, f))).count();
    let rates = Resource::new(|| (), |_| win_rates());
    view! {
        <section class="panel" aria-labelledby="gallery-title">
            <div class="gallery-head">
                <h2 id="gallery-title">"Task adapters"</h2>
                <form class="filter" method="get" action="/" role="search">
                    <label for="filter">"Filter"</label>
                    <input
                        id="filter"
                        name="q"
                        type="search"
                        placeholder="sentiment, SQL, math…"
                        prop:value=move || filter.get()
                        on:input=move |ev| filter.set(event_target_value(&ev))
                    />
                    <noscript><button class="button" type="submit">"Filter"</button></noscript>
                </form>
                <p class="muted" id="shown-count" aria-live="polite">
                    {move || format!("{} of {} adapters", shown(), catalog::tasks().len())}
                </p>
            </div>
            {catalog::by_category()
                .into_iter()
                .map(|(category, tasks)| {
                    let in_view = {
                        let tasks = tasks.clone();
                        move || tasks.iter().any(|t| filter.with(|f| matches(t, f)))
                    };
                    view! {
                        <section class="category" class:hidden=move || !in_view()>
                            <h3>{category}</h3>
                            <ul class="cards">
                                {tasks.into_iter().map(|t| view! { <Card task=t filter rates/> }).collect_view()}
                            </ul>
                        </section>
                    }
                })
                .collect_view()}
        </section>
    }
    .into_any()
}

/// The trained adapters this visitor may use: its own finished jobs and the published ones, each with its
/// held-out score and loss curve.
#[component]
pub fn TrainedGallery() -> AnyView {
    let trained = Resource::new(|| (), |_| trained_adapters());
    view! {
        <section class="panel" aria-labelledby="trained-title" id="trained-gallery">
            <div class="gallery-head">
                <h2 id="trained-title">"Trained here"</h2>
                <a class="button" href="/train">"Train an adapter"</a>
            </div>
            <Suspense fallback=|| ()>
                {move || trained.get().map(|t| match t {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(jobs) if jobs.is_empty() => view! {
                        <p class="muted">"Adapters you fine-tune on the Train page appear here, for you alone until you publish them."</p>
                    }.into_any(),
                    Ok(jobs) => view! {
                        <ul class="cards">
                            {jobs.into_iter().map(|job| view! { <TrainedCard job/> }).collect_view()}
                        </ul>
                    }.into_any(),
                })}
            </Suspense>
        </section>
    }
    .into_any()
}

#[component]
fn TrainedCard(job: JobView) -> AnyView {
    let task = catalog::task(&job.task).map_or_else(|| job.task.clone(), |t| t.name.clone());
    let adapter = job.adapter_id();
    let compare = format!("/compare?task={}&p1={adapter}&p2=base", job.task);
    let score = job
        .score
        .as_ref()
        .map(|s| format!("{}: base {:.1} → adapter {:.1} on {} held-out examples", s.metric, s.base, s.adapter, s.n));
    let whose = match (job.mine, job.published) {
        (true, true) => "yours, published",
        (true, false) => "yours",
        (false, _) => "published",
    };
    let points = Signal::stored(job.progress.clone());
    view! {
        <li class="card" data-adapter=adapter.clone()>
            <a class="card-link" href=format!("/train/{}", job.id)><strong class="card-name">{job.name.clone()}</strong></a>
            <p class="card-desc">{task} " · " <span class="muted">{whose}</span></p>
            <p class="card-meta">{score}</p>
            <LossChart points steps=job.params.steps/>
            <p><a href=compare>"Compare with the base model"</a></p>
        </li>
    }
    .into_any()
}

/// One adapter's card.
#[component]
fn Card(
    task: &'static Task,
    filter: RwSignal<String>,
    rates: Resource<Result<Vec<WinRate>, ServerFnError>>,
) -> AnyView {
    let record = move || {
        let rates = rates.get()?.ok()?;
        let r = rates.into_iter().find(|r| r.adapter == task.adapters.embedded)?;
        Some(format!("Won {} of {} votes ({:.0}%)", r.wins, r.votes, 100.0 * r.wins as f64 / r.votes as f64))
    };
    view! {
        <li class="card" class:hidden=move || !filter.with(|f| matches(task, f)) data-task=task.id.clone()>
            <a class="card-link" href=format!("/a/{}", task.id)>
                <strong class="card-name">{task.name.clone()}</strong>
            </a>
            <p class="card-desc">{task.description.clone()}</p>
            <p class="card-meta muted">
                <span>"Metric: " {task.metric.clone()}</span>
                <span>" · Output: " {task.output_format.clone()}</span>
            </p>
            <Suspense fallback=|| ()>
                <p class="card-votes">{record}</p>
            </Suspense>
        </li>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_name_category_and_description_case_insensitively() {
        let sst2 = catalog::task("glue_sst2").unwrap();
        assert!(matches(sst2, ""));
        assert!(matches(sst2, "  SENTIMENT "));
        assert!(matches(sst2, "sst2"));
        assert!(!matches(sst2, "sql"));
        let hits: Vec<&str> = catalog::tasks().iter().filter(|t| matches(t, "sql")).map(|t| t.id.as_str()).collect();
        assert_eq!(hits, ["wikisql"]);
    }
}
