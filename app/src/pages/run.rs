//! `/r/:id`: a stored run, read-only and shareable: the task, the inputs, the prompt and every pane's answer with
//! its timings.

use crate::api::{get_run, RunView, Vote};
use crate::components::timings;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

/// The run page.
#[component]
pub fn RunPage() -> AnyView {
    let params = use_params_map();
    let run = Resource::new(move || params.read().get("id").unwrap_or_default(), get_run);
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading the run…"</p> }>
            {move || run.get().map(|r| match r {
                Ok(Some(run)) => view! { <RunDetails run/> }.into_any(),
                Ok(None) => view! { <crate::pages::NotFound/> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
            })}
        </Suspense>
    }
    .into_any()
}

#[component]
fn RunDetails(run: RunView) -> AnyView {
    let task = run.task.as_deref().and_then(catalog::task);
    let title = task.map_or_else(|| "Run".to_string(), |t| t.name.clone());
    let when = format_time(run.created_at);
    let vote = ServerAction::<Vote>::new();
    let titles: Vec<String> = run.panes.iter().map(pane_title).collect();
    let voted = {
        let titles = titles.clone();
        move || match vote.value().get() {
            Some(Ok(p)) => Some(format!("Thanks! Your vote: {}.", titles.get(p as usize).cloned().unwrap_or_default())),
            Some(Err(e)) => Some(format!("Your vote was not stored: {e}")),
            None => None,
        }
    };
    let id = run.id.clone();
    let can_vote = run.panes.len() > 1;
    view! {
        <section class="panel">
            <p class="muted">
                <a href="/history">"History"</a>
                {task.map(|t| view! { " · " <a href=format!("/a/{}", t.id)>"Try this adapter"</a> })}
            </p>
            <h1>{title}</h1>
            <p class="muted">{when} " · max " {run.params.max_new_tokens} " new tokens · temperature "
                {run.params.temperature} " · top-p " {run.params.top_p} " · seed " {run.params.seed}</p>
            <dl class="inputs">
                {run.inputs.iter().map(|(k, v)| view! { <dt>{k.clone()}</dt><dd>{v.clone()}</dd> }).collect_view()}
            </dl>
            <details class="preview">
                <summary>"Prompt"</summary>
                <pre>{run.prompt.clone()}</pre>
            </details>
        </section>
        <p id="vote-status" aria-live="polite">{voted}</p>
        <section class="panes" aria-label="Answers">
            {run.panes.into_iter().map(|p| {
                let title = pane_title(&p);
                let vote_label = format!("Vote: {title} is better");
                let run_id = id.clone();
                let status = p.status;
                view! {
                    <section class="pane" data-pane=p.pane data-status=status.as_str()>
                        <header class="pane-head">
                            <h3>{title}</h3>
                            <code class="muted">{p.adapter.clone().unwrap_or_else(|| "base".into())}</code>
                        </header>
                        <div class="pane-text">{p.text.clone()}</div>
                        {p.error.clone().map(|e| view! { <p class="error" role="alert">{e}</p> })}
                        <p class="pane-timings muted">{timings(status, p.timings, 0)}</p>
                        {can_vote.then(move || view! {
                            <ActionForm action=vote attr:class="vote">
                                <input type="hidden" name="run_id" value=run_id/>
                                <input type="hidden" name="pane" value=p.pane.to_string()/>
                                <button class="button" type="submit">{vote_label}</button>
                            </ActionForm>
                        })}
                    </section>
                }
            }).collect_view()}
        </section>
    }
    .into_any()
}

/// The heading of a stored pane: the task's name for a catalog adapter, "Base model" for the base.
fn pane_title(p: &crate::api::PaneView) -> String {
    match p.adapter.as_deref() {
        None => "Base model".to_string(),
        Some(id) => catalog::tasks()
            .iter()
            .find(|t| t.adapters.embedded == id)
            .map_or_else(|| id.to_string(), |t| t.name.clone()),
    }
}

/// `YYYY-MM-DD HH:MM UTC` from Unix milliseconds (civil-from-days, no time-zone database needed).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::format_time(1_795_889_285_000), "2026-11-28 18:08 UTC");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00 UTC");
    }
}
