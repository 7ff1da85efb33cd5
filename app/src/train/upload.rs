//! A visitor's training file, read into prompt/completion examples: JSONL of `{"prompt", "completion"}`, or JSONL
//! or CSV rows holding the task's template variables and an `answer` (or `completion`) column, filled into the
//! task's exact template. A malformed file is an error naming its line; a row with an empty value is skipped, and
//! the reason is kept for the job page.

use catalog::Task;
use engine::train::Example;
use std::collections::BTreeMap;

/// The columns that can hold a row's answer, in the order they are looked for.
pub const ANSWER_COLUMNS: [&str; 2] = ["answer", "completion"];
/// At most this many skip reasons are kept (the count covers the rest).
pub const MAX_REASONS: usize = 5;

/// The examples read from a file and what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Rows left out.
    pub skipped: usize,
    /// Why, for the first [`MAX_REASONS`] of them (`line N: ...`).
    pub reasons: Vec<String>,
}

impl Parsed {
    fn skip(&mut self, line: usize, why: impl Into<String>) {
        self.skipped += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(format!("line {line}: {}", why.into()));
        }
    }
}

/// The file's format, by its name, else by its first character (`{` is JSONL).
fn is_csv(name: &str, text: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name.ends_with(".csv") {
        return true;
    }
    if name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".ndjson") {
        return false;
    }
    !text.trim_start().starts_with('{')
}

/// Reads `bytes` (a file named `name`) as training examples for `task`; more than `max_examples` rows is an error.
pub fn parse(task: &Task, name: &str, bytes: &[u8], max_examples: usize) -> Result<Parsed, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        format!("line {line}: the file is not UTF-8 text")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err("the file is empty".into());
    }
    let parsed =
        if is_csv(name, text) { parse_csv(task, text, max_examples)? } else { parse_jsonl(task, text, max_examples)? };
    if parsed.examples.len() < 2 {
        return Err(format!(
            "{} usable example(s): at least two are needed, one to train on and one held out{}",
            parsed.examples.len(),
            parsed.reasons.first().map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    Ok(parsed)
}

fn too_many(max: usize) -> String {
    format!("more than {max} examples: the limit is {max} per job")
}

fn parse_jsonl(task: &Task, text: &str, max: usize) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {n}: not a JSON object: {e}"))?;
        let serde_json::Value::Object(obj) = value else {
            return Err(format!("line {n}: expected a JSON object, one per line"));
        };
        let mut row = BTreeMap::new();
        for (k, v) in obj {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(x) => x.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => String::new(),
                _ => return Err(format!("line {n}: `{k}` must be text, a number or a boolean")),
            };
            row.insert(k, v);
        }
        if out.examples.len() + out.skipped >= max {
            return Err(too_many(max));
        }
        add_row(task, &mut out, n, row)?;
    }
    Ok(out)
}

fn parse_csv(task: &Task, text: &str, max: usize) -> Result<Parsed, String> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("line 1: cannot read the CSV header: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut out = Parsed::default();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            format!("line {line}: {}", csv_reason(&e))
        })?;
        let n = record.position().map_or(0, |p| p.line() as usize);
        if out.examples.len() + out.skipped >= max {
            return Err(too_many(max));
        }
        let row = headers.iter().cloned().zip(record.iter().map(str::to_string)).collect();
        add_row(task, &mut out, n, row)?;
    }
    Ok(out)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields where the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

/// One row: a prompt/completion pair, or the template's variables and an answer.
fn add_row(task: &Task, out: &mut Parsed, n: usize, row: BTreeMap<String, String>) -> Result<(), String> {
    if let Some(prompt) = row.get("prompt") {
        let Some(completion) = row.get("completion") else {
            return Err(format!("line {n}: a row with `prompt` needs a `completion`"));
        };
        if prompt.trim().is_empty() || completion.trim().is_empty() {
            out.skip(n, "empty prompt or completion");
        } else {
            out.examples.push(Example { prompt: prompt.clone(), completion: completion.clone() });
        }
        return Ok(());
    }
    let Some(answer) = ANSWER_COLUMNS.iter().find_map(|c| row.get(*c)) else {
        return Err(format!(
            "line {n}: no answer: expected `prompt` and `completion`, or the template's variables ({}) and `answer`",
            task.variables.join(", ")
        ));
    };
    let mut values = BTreeMap::new();
    for var in &task.variables {
        match row.get(var) {
            None => {
                return Err(format!(
                    "line {n}: no `{var}`: {}'s template needs {}",
                    task.id,
                    task.variables.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
                ))
            }
            Some(v) if v.trim().is_empty() => {
                out.skip(n, format!("`{var}` is empty"));
                return Ok(());
            }
            Some(v) => {
                values.insert(var.clone(), v.clone());
            }
        }
    }
    if answer.trim().is_empty() {
        out.skip(n, "the answer is empty");
        return Ok(());
    }
    let prompt = catalog::render(&task.template, &values).map_err(|e| format!("line {n}: {e}"))?;
    out.examples.push(Example { prompt, completion: answer.clone() });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sst2() -> &'static Task {
        catalog::task("glue_sst2").unwrap()
    }

    fn var() -> String {
        sst2().variables[0].clone()
    }

    #[test]
    fn prompt_completion_jsonl_is_read_as_it_is() {
        let text =
            "{\"prompt\": \"Say hi\", \"completion\": \"hi\"}\n\n{\"prompt\": \"Say yo\", \"completion\": \"yo\"}\n";
        let p = parse(sst2(), "data.jsonl", text.as_bytes(), 100).unwrap();
        assert_eq!(p.examples[1], Example { prompt: "Say yo".into(), completion: "yo".into() });
        assert_eq!((p.examples.len(), p.skipped), (2, 0));
    }

    #[test]
    fn template_rows_fill_the_tasks_exact_template() {
        let v = var();
        let csv = format!("{v},answer\n\"a fine, warm film\",positive\nawful,negative\n,positive\n");
        let p = parse(sst2(), "rows.csv", csv.as_bytes(), 100).unwrap();
        let values = BTreeMap::from([(v.clone(), "a fine, warm film".to_string())]);
        assert_eq!(p.examples[0].prompt, catalog::render(&sst2().template, &values).unwrap());
        assert_eq!(p.examples[0].completion, "positive");
        assert_eq!(p.skipped, 1);
        assert_eq!(p.reasons, [format!("line 4: `{v}` is empty")]);
        // The same rows as JSONL (sniffed: no .jsonl name), with a number for a value.
        let jsonl =
            format!("{{\"{v}\": \"great\", \"answer\": \"positive\"}}\n{{\"{v}\": 42, \"answer\": \"negative\"}}\n");
        let p = parse(sst2(), "upload", jsonl.as_bytes(), 100).unwrap();
        assert_eq!(p.examples[1].completion, "negative");
        assert!(p.examples[1].prompt.contains("42"));
    }

    #[test]
    fn a_bad_file_is_an_error_naming_its_line() {
        let v = var();
        let err = |name: &str, text: &str| parse(sst2(), name, text.as_bytes(), 100).unwrap_err();
        let good = "{\"prompt\": \"a\", \"completion\": \"b\"}";
        assert!(err("x.jsonl", &format!("{good}\n{good}\n{{oops\n")).starts_with("line 3: not a JSON object"));
        assert_eq!(err("x.jsonl", &format!("{good}\n[1, 2]\n")), "line 2: expected a JSON object, one per line");
        assert!(err("x.jsonl", "{\"prompt\": \"a\"}\n").starts_with("line 1: a row with `prompt` needs a `completion`"));
        let missing = err("x.csv", "text,answer\nhello,positive\n");
        assert!(missing.starts_with(&format!("line 2: no `{v}`")), "{missing}");
        assert!(err("x.csv", &format!("{v},label\nhello,positive\n")).starts_with("line 2: no answer"));
        assert_eq!(
            err("x.csv", &format!("{v},answer\nhello,positive,extra\n")),
            "line 2: 3 fields where the header has 2"
        );
        let three = format!("{good}\n{good}\n{good}\n");
        assert_eq!(
            parse(sst2(), "x.jsonl", three.as_bytes(), 2).unwrap_err(),
            "more than 2 examples: the limit is 2 per job"
        );
        assert!(err("x.jsonl", "  \n").contains("empty"));
        assert!(err("x.jsonl", good).starts_with("1 usable example(s)"));
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend([0xff, 0xfe]);
        assert_eq!(parse(sst2(), "x.jsonl", &bytes, 100).unwrap_err(), "line 2: the file is not UTF-8 text");
    }
}
