//! `/history`: this session's runs, newest first, with paging (`?page=N`, plain links so it works without
//! JavaScript).

use crate::api::list_runs;
use crate::pages::run::format_time;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// The history page.
#[component]
pub fn History() -> AnyView {
    let query = use_query_map();
    let page = move || query.read().get("page").and_then(|p| p.parse::<i64>().ok()).unwrap_or(0).max(0);
    let runs = Resource::new(page, list_runs);
    view! {
        <section class="panel">
            <h1>"History"</h1>
            <p class="muted">"The runs of this browser's session, newest first."</p>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || runs.get().map(|r| match r {
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                    Ok(p) if p.runs.is_empty() && page() == 0 => view! {
                        <p id="no-runs">"No runs yet. Pick an adapter on the " <a href="/">"gallery"</a> "."</p>
                    }.into_any(),
                    Ok(p) => {
                        let n = page();
                        view! {
                            <ol class="history" id="history">
                                {p.runs.into_iter().map(|r| {
                                    let name = r.task.as_deref().and_then(catalog::task).map_or_else(|| "Run".to_string(), |t| t.name.clone());
                                    view! {
                                        <li>
                                            <a href=format!("/r/{}", r.id)>{name}</a>
                                            <span class="muted">{format!(" · {} · {}/{} panes finished", format_time(r.created_at), r.finished, r.panes)}</span>
                                            <p class="excerpt">{r.excerpt}</p>
                                        </li>
                                    }
                                }).collect_view()}
                            </ol>
                            <nav class="pager" aria-label="Pages">
                                {(n > 0).then(|| view! { <a href=format!("/history?page={}", n - 1)>"Newer"</a> })}
                                {p.more.then(|| view! { <a href=format!("/history?page={}", n + 1)>"Older"</a> })}
                            </nav>
                        }.into_any()
                    }
                })}
            </Suspense>
        </section>
    }
    .into_any()
}
