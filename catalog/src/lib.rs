//! The adapter catalog: the 25 LoRA Land tasks of `catalog/adapters.json` (made by `scripts/make-catalog.py` from
//! the study's task files), with their exact prompt templates, variables, example inputs, metric and the adapter of
//! each deployment profile. Compiled into the server, the lab tools and the WASM bundle.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The catalog file, embedded at build time.
const CATALOG_JSON: &str = include_str!("../adapters.json");

/// Where a task's adapter comes from in each deployment profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSources {
    /// The adapter id on the embedded default model (a folder of `--adapters-dir`).
    pub embedded: String,
    /// The Hugging Face hub repository of the Mistral-7B adapter.
    #[serde(rename = "mistral-7b")]
    pub mistral_7b: String,
}

/// One task of the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task id (the study's `dataset_name`).
    pub id: String,
    /// The name the LoRA Land app showed.
    pub name: String,
    /// The category the LoRA Land app grouped it under.
    pub category: String,
    /// One line about the task.
    pub description: String,
    /// The exact prompt template (Python `str.format` syntax: `{name}` variables, `{{`/`}}` literal braces).
    pub template: String,
    /// The template's variables, in input order.
    pub variables: Vec<String>,
    /// How the study scored it.
    pub metric: String,
    /// What an answer looks like (`text`, `number`, `json`, `SQL`, `code`).
    pub output_format: String,
    /// Five example inputs, each a value per variable.
    pub examples: Vec<BTreeMap<String, String>>,
    /// Python's rendering of the first example (the reference the renderer is tested against).
    pub reference_prompt: String,
    /// Adapter per deployment profile.
    pub adapters: AdapterSources,
    /// Whether Predibase published the Mistral-7B adapter.
    pub published: bool,
    /// What an answer must look like, for constrained decoding: the label set the template names, or the JSON its
    /// example shows (`None` for free text).
    #[serde(default)]
    pub constraint: Option<OutputConstraint>,
}

/// The output format of a task, as constrained decoding takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputConstraint {
    /// One of these labels.
    Choice(Vec<String>),
    /// Text matching this regular expression.
    Regex(String),
    /// A JSON value of this schema.
    JsonSchema(serde_json::Value),
}

#[derive(Deserialize)]
struct CatalogFile {
    tasks: Vec<Task>,
}

/// Every task, in catalog order.
pub fn tasks() -> &'static [Task] {
    static TASKS: OnceLock<Vec<Task>> = OnceLock::new();
    TASKS.get_or_init(|| {
        serde_json::from_str::<CatalogFile>(CATALOG_JSON).expect("catalog/adapters.json is valid (tested)").tasks
    })
}

/// The task with this id.
pub fn task(id: &str) -> Option<&'static Task> {
    tasks().iter().find(|t| t.id == id)
}

/// The categories, in order of first appearance, with their tasks.
pub fn by_category() -> Vec<(&'static str, Vec<&'static Task>)> {
    let mut groups: Vec<(&str, Vec<&Task>)> = Vec::new();
    for t in tasks() {
        match groups.iter_mut().find(|(c, _)| *c == t.category) {
            Some((_, list)) => list.push(t),
            None => groups.push((&t.category, vec![t])),
        }
    }
    groups
}

/// Why a template could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` with no value given.
    #[error("the template uses `{{{0}}}`, which has no value")]
    Missing(String),
    /// A `{` or `}` that is neither doubled nor part of a variable.
    #[error("unbalanced brace at byte {0} of the template")]
    Unbalanced(usize),
}

/// A piece of a rendered template: the template's own text, or a value filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text of the template (literal braces resolved).
    Template(String),
    /// The value of one of its variables (a visitor's input).
    Value(String),
}

/// Renders `template` as Python's `str.format(**values)` does for plain `{name}` fields: `{{` and `}}` are
/// literal braces.
pub fn render(template: &str, values: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    Ok(render_pieces(template, values)?
        .into_iter()
        .map(|p| match p {
            Piece::Template(t) | Piece::Value(t) => t,
        })
        .collect())
}

/// [`render`], keeping the template's text apart from the values filled in (so that a value is tokenized as the
/// content it is: special-token text in a visitor's input stays text).
pub fn render_pieces(template: &str, values: &BTreeMap<String, String>) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::with_capacity(template.len());
    let mut rest = template;
    let mut at = 0;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push_str(&tail[..1]);
            rest = &tail[2..];
            at += i + 2;
            continue;
        }
        if tail.starts_with('}') {
            return Err(TemplateError::Unbalanced(at + i));
        }
        let end = tail.find('}').ok_or(TemplateError::Unbalanced(at + i))?;
        let name = &tail[1..end];
        let value = values.get(name).ok_or_else(|| TemplateError::Missing(name.to_string()))?;
        if !text.is_empty() {
            pieces.push(Piece::Template(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Value(value.clone()));
        rest = &tail[end + 1..];
        at += i + end + 1;
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Template(text));
    }
    Ok(pieces)
}

/// The variables a template uses, in order of first use.
pub fn variables_of(template: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") || tail.starts_with('}') {
            rest = &tail[tail.len().min(2)..];
            continue;
        }
        let Some(end) = tail.find('}') else { break };
        let name = tail[1..end].to_string();
        if !names.contains(&name) {
            names.push(name);
        }
        rest = &tail[end + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_25_tasks_with_unique_ids_and_five_examples() {
        let all = tasks();
        assert_eq!(all.len(), 25);
        let mut ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 25);
        for t in all {
            assert_eq!(t.examples.len(), 5, "{}", t.id);
            assert!(!t.name.is_empty() && !t.category.is_empty() && !t.description.is_empty(), "{}", t.id);
            assert_eq!(t.adapters.mistral_7b, format!("predibase/{}", t.id));
        }
        assert!(by_category().len() >= 8);
    }

    #[test]
    fn every_template_uses_exactly_its_variables_and_renders_like_python() {
        for t in tasks() {
            let mut used = variables_of(&t.template);
            let mut declared = t.variables.clone();
            used.sort();
            declared.sort();
            assert_eq!(used, declared, "{}: template variables vs input_columns", t.id);
            for example in &t.examples {
                let rendered = render(&t.template, example).unwrap_or_else(|e| panic!("{}: {e}", t.id));
                for value in example.values() {
                    assert!(rendered.contains(value.as_str()), "{}", t.id);
                }
            }
            assert_eq!(render(&t.template, &t.examples[0]).unwrap(), t.reference_prompt, "{}", t.id);
        }
    }

    #[test]
    fn label_constraints_name_what_their_templates_ask_for() {
        let constrained: Vec<&Task> = tasks().iter().filter(|t| t.constraint.is_some()).collect();
        assert!(constrained.len() >= 14, "{} tasks with an output constraint", constrained.len());
        for t in constrained {
            match t.constraint.as_ref().expect("filtered") {
                OutputConstraint::Choice(labels) => {
                    assert!(labels.len() >= 2, "{}", t.id);
                    let template = t.template.to_lowercase();
                    for label in labels {
                        assert!(template.contains(&label.to_lowercase()), "{}: {label:?} is not in the template", t.id);
                    }
                }
                OutputConstraint::Regex(rx) => assert!(!rx.is_empty(), "{}", t.id),
                OutputConstraint::JsonSchema(schema) => {
                    // The NER schema's keys are the categories of the template's example output.
                    for key in schema["required"].as_array().expect("required keys") {
                        let key = key.as_str().expect("a string");
                        assert!(t.template.contains(&format!("\"{key}\"")), "{}: {key}", t.id);
                    }
                }
            }
        }
        assert_eq!(
            task("conllpp").and_then(|t| t.constraint.as_ref()).map(std::mem::discriminant),
            Some(std::mem::discriminant(&OutputConstraint::JsonSchema(serde_json::Value::Null)))
        );
    }

    #[test]
    fn literal_braces_and_errors() {
        let values: BTreeMap<String, String> = [("x".to_string(), "1".to_string())].into();
        assert_eq!(render("{{\"a\": {x}}}", &values).unwrap(), "{\"a\": 1}");
        assert_eq!(render("{y}", &values), Err(TemplateError::Missing("y".into())));
        assert_eq!(render("a } b", &values), Err(TemplateError::Unbalanced(2)));
        assert_eq!(render("a { b", &values), Err(TemplateError::Unbalanced(2)));
        assert_eq!(variables_of("{{no}} {a} {b} {a}"), ["a", "b"]);
        let pieces = render_pieces("Q: {x}{x} {{end}}", &values).unwrap();
        let expected = [
            Piece::Template("Q: ".into()),
            Piece::Value("1".into()),
            Piece::Value("1".into()),
            Piece::Template(" {end}".into()),
        ];
        assert_eq!(pieces, expected);
    }
}
