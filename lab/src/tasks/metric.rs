//! Scoring a generated answer against the expected one, per task: flexible label accuracy (as LoRA Land's
//! `*_accuracy` metrics: case, quotes and trailing text ignored), ROUGE-L F1 (Lin 2004, `rouge_score`'s default
//! tokenization) for texts, JSON and SQL, closeness for STS-B scores, and the final number for GSM8K.

use serde::Serialize;

/// How a task is scored; every score is in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Metric {
    /// The first line's leading label equals the expected label (numbers compared as numbers).
    Accuracy,
    /// ROUGE-L F1 over lowercase alphanumeric tokens.
    RougeL,
    /// The first number is within this distance of the expected number.
    Within(f64),
    /// The number after `####` (else the last number) equals the expected one.
    FinalNumber,
}

impl Metric {
    /// Short name for tables.
    pub fn name(&self) -> String {
        match self {
            Metric::Accuracy => "accuracy".into(),
            Metric::RougeL => "ROUGE-L".into(),
            Metric::Within(d) => format!("within ±{d}"),
            Metric::FinalNumber => "final number".into(),
        }
    }

    /// The score of `prediction` against `expected`.
    pub fn score(&self, prediction: &str, expected: &str) -> f64 {
        match self {
            Metric::Accuracy => f64::from(u8::from(label_matches(prediction, expected))),
            Metric::RougeL => rouge_l(prediction, expected),
            Metric::Within(d) => match (first_number(prediction), first_number(expected)) {
                (Some(p), Some(e)) if (p - e).abs() <= *d => 1.0,
                _ => 0.0,
            },
            Metric::FinalNumber => match (final_number(prediction), final_number(expected)) {
                (Some(p), Some(e)) if (p - e).abs() < 1e-9 => 1.0,
                _ => 0.0,
            },
        }
    }
}

fn normalize(s: &str) -> String {
    let line = s.trim().lines().next().unwrap_or("").trim();
    line.trim_matches(|c: char| c == '"' || c == '\'' || c == '`' || c.is_whitespace()).to_lowercase()
}

/// Whether the prediction's first line starts with the expected label, as a whole word or number.
pub fn label_matches(prediction: &str, expected: &str) -> bool {
    let (p, e) = (normalize(prediction), normalize(expected));
    if e.is_empty() {
        return p.is_empty();
    }
    if let (Some(pn), Ok(en)) = (first_number(&p), e.parse::<f64>()) {
        return p.starts_with(|c: char| c.is_ascii_digit() || c == '-') && (pn - en).abs() < 1e-9;
    }
    match p.strip_prefix(&e) {
        Some(rest) => !rest.starts_with(|c: char| c.is_alphanumeric()),
        None => false,
    }
}

fn numbers(s: &str) -> impl Iterator<Item = f64> + '_ {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .map(|t| t.trim_end_matches('.'))
        .filter_map(|t| t.parse::<f64>().ok())
}

fn first_number(s: &str) -> Option<f64> {
    numbers(s).next()
}

fn final_number(s: &str) -> Option<f64> {
    match s.rsplit_once("####") {
        Some((_, tail)) => first_number(&tail.replace(',', "")),
        None => numbers(&s.replace(',', "")).last(),
    }
}

fn tokens(s: &str) -> Vec<String> {
    s.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// ROUGE-L F1 of two texts.
pub fn rouge_l(prediction: &str, expected: &str) -> f64 {
    let (p, e) = (tokens(prediction), tokens(expected));
    if p.is_empty() || e.is_empty() {
        return f64::from(u8::from(p.is_empty() && e.is_empty()));
    }
    let mut row = vec![0usize; e.len() + 1];
    for a in &p {
        let mut diag = 0;
        for (j, b) in e.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if a == b { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    let lcs = row[e.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / p.len() as f64, lcs / e.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_flexibly_but_not_loosely() {
        assert!(label_matches(" 1\n", "1"));
        assert!(label_matches("\"Positive\" because", "positive"));
        assert!(label_matches("replace card.", "replace card"));
        assert!(!label_matches("Extremely Positive", "Positive"));
        assert!(!label_matches("10", "1"));
        assert!(!label_matches("yesterday", "yes"));
        assert!(label_matches("2.0", "2"));
        assert!(!label_matches("", "0"));
    }

    #[test]
    fn rouge_l_is_the_lcs_f_measure() {
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l("dog", "the cat sat"), 0.0);
        // LCS "the sat" = 2: precision 2/2, recall 2/3.
        assert!((rouge_l("the sat", "the cat sat") - 0.8).abs() < 1e-12);
        assert_eq!(rouge_l("", ""), 1.0);
    }

    #[test]
    fn numbers_are_read_from_answers() {
        let m = Metric::FinalNumber;
        assert_eq!(m.score("3 + 5 = 8 apples.\n#### 8", "#### 8"), 1.0);
        assert_eq!(m.score("so the answer is 1,200", "#### 1200"), 1.0);
        assert_eq!(m.score("#### 7", "#### 8"), 0.0);
        assert_eq!(Metric::Within(0.5).score("4.2", "4.0"), 1.0);
        assert_eq!(Metric::Within(0.5).score("2.5", "4.0"), 0.0);
        assert_eq!(Metric::Within(0.5).score("none", "4.0"), 0.0);
    }
}
