//! `/compare`: the same inputs through up to four chosen panes (catalog adapters and/or the base model) at once,
//! streamed in parallel. The choice is a plain GET form (`task`, `p1`..`p4`), so a comparison has a link.

use crate::api::MAX_PANES;
use crate::pages::playground::{PaneSpec, TaskPlayground};
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// The panes chosen by `p1`..`p4`: `base`, a catalog task id (its embedded adapter), or a trained adapter
/// (`trained/<job>`, checked against the visitor's session when the run is stored); unknown values are skipped.
pub fn chosen_panes(values: &[Option<String>]) -> Vec<PaneSpec> {
    values
        .iter()
        .flatten()
        .filter_map(|v| match v.as_str() {
            "base" => Some(PaneSpec::base()),
            id if crate::train::job_of_adapter(id).is_some() => Some(PaneSpec::trained(id)),
            id => catalog::task(id).map(PaneSpec::task),
        })
        .take(MAX_PANES)
        .collect()
}

/// The compare page.
#[component]
pub fn Compare() -> AnyView {
    let query = use_query_map();
    let q = query.read_untracked();
    let task_id = q.get("task").unwrap_or_else(|| "glue_sst2".to_string());
    let picks: Vec<Option<String>> = (1..=MAX_PANES).map(|i| q.get(&format!("p{i}"))).collect();
    drop(q);
    let panes = chosen_panes(&picks);
    let task = catalog::task(&task_id);
    let option = |value: &str, label: &str, selected: bool| {
        view! { <option value=value.to_string() selected=selected>{label.to_string()}</option> }
    };
    view! {
        <section class="panel">
            <h1>"Compare"</h1>
            <p>"Run one task's prompt through up to four adapters and the base model at once."</p>
            <form method="get" action="/compare" class="compare-form">
                <label for="task">"Prompt template"
                    <select id="task" name="task">
                        {catalog::tasks().iter().map(|t| option(&t.id, &t.name, t.id == task_id)).collect_view()}
                    </select>
                </label>
                {picks.iter().enumerate().map(|(i, pick)| {
                    let pick = pick.clone().unwrap_or_default();
                    let (id, for_id, name) = (format!("p{}", i + 1), format!("p{}", i + 1), format!("p{}", i + 1));
                    view! {
                        <label for=for_id>{format!("Pane {}", i + 1)}
                            <select id=id name=name>
                                {option("", "(none)", pick.is_empty())}
                                {option("base", "Base model", pick == "base")}
                                {crate::train::job_of_adapter(&pick).is_some().then(|| option(&pick, &format!("Trained adapter {pick}"), true))}
                                {catalog::tasks().iter().map(|t| option(&t.id, &t.name, t.id == pick)).collect_view()}
                            </select>
                        </label>
                    }
                }).collect_view()}
                <button class="button" type="submit">"Set up"</button>
            </form>
        </section>
        {match (task, panes.is_empty()) {
            (Some(task), false) => view! { <TaskPlayground task panes/> }.into_any(),
            (None, _) => view! { <p class="error" role="alert">{format!("unknown task `{task_id}`")}</p> }.into_any(),
            (_, true) => view! { <p class="muted panel">"Choose at least one pane, then Set up."</p> }.into_any(),
        }}
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panes_come_from_the_query_in_order_and_at_most_four() {
        let some = |s: &str| Some(s.to_string());
        let panes = chosen_panes(&[some("glue_sst2"), None, some("base"), some("nope"), some("gsm8k")]);
        let models: Vec<&str> = panes.iter().map(|p| p.label.model.as_str()).collect();
        assert_eq!(models, ["glue_sst2", "base", "gsm8k"]);
        let trained = chosen_panes(&[some("trained/0123456789ab"), some("trained/../x"), some("base")]);
        let adapters: Vec<Option<&str>> = trained.iter().map(|p| p.adapter.as_deref()).collect();
        assert_eq!(adapters, [Some("trained/0123456789ab"), None]);
        let many = chosen_panes(&vec![some("base"); 6]);
        assert_eq!(many.len(), MAX_PANES);
    }
}
