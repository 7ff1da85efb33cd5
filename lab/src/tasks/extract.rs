//! Generators of the tasks whose answer is extracted or computed from the input: entity lists (JSON), answer spans,
//! arithmetic with its working, SQL over a small table, and short programs.

use super::pick::{chance, distinct, int, one, CITIES, COUNTRIES, FIRST_NAMES, ORGS, PEOPLE};
use super::sample::Sample;
use rand::rngs::StdRng;

fn quoted(items: &[String], quote: char) -> String {
    let inner: Vec<String> = items.iter().map(|s| format!("{quote}{s}{quote}")).collect();
    format!("[{}]", inner.join(", "))
}

pub fn conllpp(rng: &mut StdRng) -> Sample {
    const MISC: &[&str] = &["German", "French", "British", "Olympic", "European", "Spanish"];
    let person = one(rng, PEOPLE).to_string();
    let org = one(rng, ORGS).to_string();
    let place = one(rng, CITIES).to_string();
    let misc = one(rng, MISC).to_string();
    let (input, p, o, l, m) = match int(rng, 0, 3) {
        0 => (format!("{person} joined {org} in {place} ."), vec![person], vec![org], vec![place], vec![]),
        1 => (format!("{org} shares rose in {place} on Monday ."), vec![], vec![org], vec![place], vec![]),
        2 => (format!("{person} won the {misc} title ."), vec![person], vec![], vec![], vec![misc]),
        _ => (format!("{misc} officials met {person} in {place} ."), vec![person], vec![], vec![place], vec![misc]),
    };
    let out = format!(
        "{{\"person\": {}, \"organization\": {}, \"location\": {}, \"miscellaneous\": {}}}",
        quoted(&p, '"'),
        quoted(&o, '"'),
        quoted(&l, '"'),
        quoted(&m, '"')
    );
    Sample { vars: vec![("input", input)], completion: out }
}

pub fn bc5cdr(rng: &mut StdRng) -> Sample {
    const CHEMICALS: &[&str] = &["lithium", "cisplatin", "haloperidol", "aspirin", "nicotine", "morphine", "warfarin"];
    const DISEASES: &[&str] =
        &["renal failure", "hypotension", "seizures", "liver injury", "heart failure", "neuropathy"];
    let chem = one(rng, CHEMICALS).to_string();
    let disease = one(rng, DISEASES).to_string();
    let n = int(rng, 2, 300);
    let sentence = match int(rng, 0, 2) {
        0 => format!("Treatment with {chem} was associated with {disease} in {n} patients ."),
        1 => format!("A case of {disease} induced by {chem} after {n} days ."),
        _ => format!("{} caused {disease} in {n} rats .", capitalize(&chem)),
    };
    let chem_token = if sentence.starts_with(&capitalize(&chem)) { capitalize(&chem) } else { chem };
    let mut words = disease.split(' ');
    let first = words.next().unwrap_or_default().to_string();
    let rest: Vec<String> = words.map(str::to_string).collect();
    let out = format!(
        "{{'B-Chemical': {}, 'B-Disease': {}, 'I-Disease': {}, 'I-Chemical': []}}",
        quoted(&[chem_token], '\''),
        quoted(&[first], '\''),
        quoted(&rest, '\'')
    );
    Sample { vars: vec![("tokens_concatenated", sentence)], completion: out }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

pub fn drop(rng: &mut StdRng) -> Sample {
    let (home, away) = (one(rng, CITIES), one(rng, CITIES));
    let (a, b) = (int(rng, 7, 35), int(rng, 3, 30));
    let kicker = one(rng, PEOPLE);
    let yards = int(rng, 20, 55);
    let passage = format!(
        "{home} hosted {away} on Sunday. {kicker} kicked a {yards}-yard field goal in the first quarter. \
         {home} scored {a} points and {away} scored {b} points."
    );
    let (question, answer) = match int(rng, 0, 2) {
        0 => ("Who kicked the field goal?".to_string(), kicker.to_string()),
        1 => ("How many points were scored in total?".to_string(), (a + b).to_string()),
        _ => ("How many yards was the field goal?".to_string(), yards.to_string()),
    };
    Sample { vars: vec![("passage", passage), ("question", question)], completion: answer }
}

pub fn gsm8k(rng: &mut StdRng) -> Sample {
    const ITEMS: &[&str] = &["apples", "pencils", "stickers", "marbles", "books", "cookies"];
    let name = one(rng, FIRST_NAMES);
    let item = one(rng, ITEMS);
    let (a, b, c) = (int(rng, 3, 40), int(rng, 2, 30), int(rng, 2, 6));
    let (question, working, answer) = match int(rng, 0, 2) {
        0 => (
            format!("{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"),
            format!("{name} has {a} + {b} = {} {item}.", a + b),
            a + b,
        ),
        1 => (
            format!("{name} buys {c} boxes of {item} with {b} {item} in each box. How many {item} does {name} buy?"),
            format!("{name} buys {c} * {b} = {} {item}.", c * b),
            c * b,
        ),
        _ => {
            let total = a + b;
            (
                format!("{name} had {total} {item} and gave away {b}. How many {item} are left?"),
                format!("{name} has {total} - {b} = {a} {item} left."),
                a,
            )
        }
    };
    Sample { vars: vec![("question", question)], completion: format!("{working}\n#### {answer}") }
}

pub fn wikisql(rng: &mut StdRng) -> Sample {
    const TABLES: &[(&str, &[&str])] = &[
        ("players", &["Player", "Team", "Position", "Goals"]),
        ("cities", &["City", "Country", "Population", "Mayor"]),
        ("albums", &["Album", "Artist", "Year", "Label"]),
    ];
    let (name, cols) = TABLES[int(rng, 0, 2) as usize];
    let table = format!(
        "table_{}_{} ({})",
        int(rng, 1, 99),
        name,
        cols.iter().map(|c| format!("{c} VARCHAR")).collect::<Vec<_>>().join(", ")
    );
    let table_name = table.split(' ').next().unwrap_or_default().to_string();
    let idx = distinct(rng, cols.len(), 2);
    let (want, by) = (cols[idx[0]], cols[idx[1]]);
    let value = match by {
        "Player" | "Mayor" | "Artist" => one(rng, PEOPLE).to_string(),
        "Team" | "Label" => one(rng, ORGS).to_string(),
        "City" => one(rng, CITIES).to_string(),
        "Country" => one(rng, COUNTRIES).to_string(),
        _ => int(rng, 1, 2000).to_string(),
    };
    let question = format!("What is the {} when the {} is {value}?", want.to_lowercase(), by.to_lowercase());
    let sql = format!("SELECT {want} FROM {table_name} WHERE {by} = \"{value}\"");
    Sample { vars: vec![("table", table), ("question", question)], completion: sql }
}

pub fn magicoder(rng: &mut StdRng) -> Sample {
    const PROBLEMS: &[(&str, &str, &str, &str)] = &[
        (
            "Write a function `{f}` that returns the sum of two integers.",
            "def {f}(a, b):\n    return a + b",
            "fn {f}(a: i64, b: i64) -> i64 {\n    a + b\n}",
            "function {f}(a, b) {\n  return a + b;\n}",
        ),
        (
            "Write a function `{f}` that returns the largest number in a list.",
            "def {f}(xs):\n    return max(xs)",
            "fn {f}(xs: &[i64]) -> i64 {\n    *xs.iter().max().unwrap()\n}",
            "function {f}(xs) {\n  return Math.max(...xs);\n}",
        ),
        (
            "Write a function `{f}` that reverses a string.",
            "def {f}(s):\n    return s[::-1]",
            "fn {f}(s: &str) -> String {\n    s.chars().rev().collect()\n}",
            "function {f}(s) {\n  return s.split('').reverse().join('');\n}",
        ),
        (
            "Write a function `{f}` that returns true if a number is even.",
            "def {f}(n):\n    return n % 2 == 0",
            "fn {f}(n: i64) -> bool {\n    n % 2 == 0\n}",
            "function {f}(n) {\n  return n % 2 === 0;\n}",
        ),
    ];
    const NAMES: &[&str] = &["solve", "compute", "helper", "answer", "process", "calc"];
    let (problem, py, rs, js) = PROBLEMS[int(rng, 0, 3) as usize];
    let f = format!("{}_{}", one(rng, NAMES), int(rng, 1, 99));
    let (lang, code) = match int(rng, 0, 2) {
        0 => ("python", py),
        1 => ("rust", rs),
        _ => ("javascript", js),
    };
    let problem = if chance(rng, 0.5) { problem.to_string() } else { format!("{problem} Keep it short.") };
    Sample {
        vars: vec![("problem", problem.replace("{f}", &f)), ("lang", lang.to_string())],
        completion: code.replace("{f}", &f),
    }
}
