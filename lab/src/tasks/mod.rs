//! Synthetic task data for the 25 catalog tasks: for each task a generator, deterministic in its seed, that fills
//! the task's exact prompt template with made-up inputs and gives the answer in the task's output format (labels,
//! entity lists, SQL, numbers, short texts). The data is synthetic, small-vocabulary and easy; it exists so that the
//! embedded model's demo adapters can be trained and scored here, and is labelled synthetic wherever it is shown.
//! Train and test splits come from different seeds, and no test prompt ever appears in the training split.

mod classify;
mod extract;
pub mod metric;
mod pick;
mod sample;
mod text;

use anyhow::{bail, Context};
use catalog::Task;
use engine::train::Example;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashSet};

pub use metric::Metric;
use sample::Sample;

type GenFn = fn(&mut rand::rngs::StdRng) -> Sample;

/// Which split to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training examples: never equal to a test prompt.
    Train,
    /// Held-out examples for evaluation.
    Test,
}

/// Test prompts the training split always avoids (more than any evaluation here uses).
pub const TEST_POOL: usize = 1000;

/// The generator of one catalog task.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    task: &'static Task,
    sample: GenFn,
    /// How answers are scored.
    pub metric: Metric,
    /// Longest answer worth generating, in tokens.
    pub max_new_tokens: usize,
}

/// Every task id with a generator, in catalog order.
pub fn task_ids() -> Vec<&'static str> {
    catalog::tasks().iter().map(|t| t.id.as_str()).filter(|id| lookup(id).is_some()).collect()
}

fn lookup(id: &str) -> Option<(GenFn, Metric, usize)> {
    use Metric::*;
    Some(match id {
        "customer_support" => (classify::customer_support, Accuracy, 8),
        "dbpedia" => (classify::dbpedia, Accuracy, 6),
        "legal" => (text::legal, RougeL, 8),
        "glue_sst2" => (classify::sst2, Accuracy, 4),
        "covid" => (classify::covid, Accuracy, 8),
        "jigsaw" => (classify::jigsaw, Accuracy, 4),
        "conllpp" => (extract::conllpp, RougeL, 64),
        "bc5cdr" => (extract::bc5cdr, RougeL, 64),
        "glue_mnli" => (classify::mnli, Accuracy, 4),
        "glue_qnli" => (classify::qnli, Accuracy, 4),
        "glue_qqp" => (classify::qqp, Accuracy, 4),
        "glue_mrpc" => (classify::mrpc, Accuracy, 4),
        "glue_stsb" => (classify::stsb, Within(0.5), 6),
        "glue_cola" => (classify::cola, Accuracy, 4),
        "boolq" => (classify::boolq, Accuracy, 4),
        "winogrande" => (classify::winogrande, Accuracy, 4),
        "hellaswag" => (classify::hellaswag, Accuracy, 4),
        "drop" => (extract::drop, RougeL, 12),
        "gsm8k" => (extract::gsm8k, FinalNumber, 64),
        "magicoder" => (extract::magicoder, RougeL, 64),
        "wikisql" => (extract::wikisql, RougeL, 48),
        "e2e_nlg" => (text::e2e_nlg, RougeL, 48),
        "viggo" => (text::viggo, RougeL, 48),
        "tldr_headline_gen" => (text::headline, RougeL, 32),
        "tldr_content_gen" => (text::content, RougeL, 80),
        _ => return None,
    })
}

/// The generator of catalog task `id`.
pub fn generator(id: &str) -> anyhow::Result<Generator> {
    let task = catalog::task(id).with_context(|| format!("unknown task {id:?}; known: {}", task_ids().join(", ")))?;
    let Some((sample, metric, max_new_tokens)) = lookup(id) else {
        bail!("task {id} has no data generator");
    };
    Ok(Generator { task, sample, metric, max_new_tokens })
}

impl Generator {
    /// The catalog task.
    pub fn task(&self) -> &'static Task {
        self.task
    }

    fn example(&self, rng: &mut rand::rngs::StdRng) -> Example {
        let s = (self.sample)(rng);
        let values: BTreeMap<String, String> = s.vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let prompt = catalog::render(&self.task.template, &values)
            .unwrap_or_else(|e| panic!("generator of {} does not fill its template: {e:?}", self.task.id));
        Example { prompt, completion: s.completion }
    }

    /// `n` distinct examples from the stream of `seed`, skipping prompts in `avoid`.
    fn stream(&self, n: usize, seed: u64, avoid: &HashSet<String>) -> Vec<Example> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(n);
        // Small tasks run out of distinct inputs; stop after many repeats in a row instead of looping forever.
        let mut misses = 0;
        while out.len() < n && misses < 10_000 {
            let ex = self.example(&mut rng);
            if avoid.contains(&ex.prompt) || !seen.insert(ex.prompt.clone()) {
                misses += 1;
                continue;
            }
            misses = 0;
            out.push(ex);
        }
        out
    }

    /// `n` examples of `split`, deterministic in `seed`.
    pub fn split(&self, split: Split, n: usize, seed: u64) -> Vec<Example> {
        let test_seed = seed.wrapping_mul(2).wrapping_add(1) ^ 0x7e57;
        let train_seed = seed.wrapping_mul(2) ^ 0x7a11;
        match split {
            Split::Test => self.stream(n, test_seed, &HashSet::new()),
            Split::Train => {
                let avoid = self.stream(TEST_POOL.max(n), test_seed, &HashSet::new());
                let avoid: HashSet<String> = avoid.into_iter().map(|e| e.prompt).collect();
                self.stream(n, train_seed, &avoid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_task_has_a_generator_that_fills_its_exact_template() {
        assert_eq!(task_ids().len(), catalog::tasks().len());
        for id in task_ids() {
            let g = generator(id).unwrap();
            let test = g.split(Split::Test, 50, 0);
            assert_eq!(test.len(), 50, "{id}");
            for ex in &test {
                assert!(!ex.completion.trim().is_empty(), "{id}: empty answer");
                // The fixed parts of the template (escapes resolved) are all there, in order.
                let markers: BTreeMap<String, String> =
                    g.task().variables.iter().map(|v| (v.clone(), "\u{0}".to_string())).collect();
                let skeleton = catalog::render(&g.task().template, &markers).unwrap();
                let mut rest = ex.prompt.as_str();
                for part in skeleton.split('\u{0}').filter(|p| !p.is_empty()) {
                    let at = rest.find(part).unwrap_or_else(|| panic!("{id}: {part:?} missing"));
                    rest = &rest[at + part.len()..];
                }
                assert!(ex.prompt.ends_with(skeleton.rsplit('\u{0}').next().unwrap()), "{id}");
            }
            assert_eq!(test, g.split(Split::Test, 50, 0), "{id}: not deterministic");
        }
    }

    #[test]
    fn train_and_test_splits_are_disjoint() {
        for id in ["glue_sst2", "gsm8k", "conllpp", "viggo"] {
            let g = generator(id).unwrap();
            let test: HashSet<String> = g.split(Split::Test, TEST_POOL, 3).into_iter().map(|e| e.prompt).collect();
            let train = g.split(Split::Train, 500, 3);
            assert_eq!(train.len(), 500, "{id}");
            assert!(train.iter().all(|e| !test.contains(&e.prompt)), "{id}");
        }
    }

    #[test]
    fn unknown_task_names_the_known_ones() {
        let err = generator("nope").unwrap_err().to_string();
        assert!(err.contains("unknown task \"nope\"") && err.contains("glue_sst2"), "{err}");
    }
}

/// The tasks as the web app's training jobs see them (see [`app::train::TaskLab`]): their synthetic data, drawn as
/// `loraland train --task` draws it, and their metrics. A task without a generator scores by exact match.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppLab;

impl app::train::TaskLab for AppLab {
    fn synthetic(
        &self,
        task: &str,
        train: usize,
        held_out: usize,
        seed: u64,
    ) -> anyhow::Result<(Vec<Example>, Vec<Example>)> {
        let gen = generator(task)?;
        Ok((gen.split(Split::Train, train, seed), gen.split(Split::Test, held_out, seed)))
    }

    fn metric(&self, task: &str) -> String {
        generator(task).map_or_else(|_| "exact match".into(), |g| g.metric.name())
    }

    fn score(&self, task: &str, prediction: &str, expected: &str) -> f64 {
        match generator(task) {
            Ok(g) => g.metric.score(prediction, expected),
            Err(_) => f64::from(u8::from(prediction.trim() == expected.trim())),
        }
    }

    fn max_new_tokens(&self, task: &str) -> usize {
        generator(task).map_or(32, |g| g.max_new_tokens)
    }

    fn has_synthetic(&self, task: &str) -> bool {
        lookup(task).is_some()
    }
}
