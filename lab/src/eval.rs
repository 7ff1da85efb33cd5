//! `loraland eval`: runs a task's held-out split through the base model and its adapter (greedy, every row of a
//! chunk in one mixed batch) and scores the answers with the task's metric; `--all` prints the study-style table of
//! every task, base vs fine-tuned, with the averages, as Markdown (and JSON with `--json`).

use crate::local;
use crate::tasks::{self, Generator, Split};
use anyhow::{bail, Context};
use clap::Args;
use engine::{AdapterId, Constraint, EngineConfig, GenerateRequest, LoadOptions, Prompt, SamplingParams};
use serde::Serialize;
use server::args::QuantArg;
use std::path::PathBuf;

/// `loraland eval` options.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Base model: a GGUF file or a Hugging Face folder.
    #[arg(long, env = "LORALAND_MODEL")]
    pub model: PathBuf,
    /// The adapter to score (with one --task); without it, `<adapters-dir>/<task id>` where it exists.
    #[arg(long, conflicts_with = "all")]
    pub adapter: Option<PathBuf>,
    /// Catalog tasks, comma-separated.
    #[arg(long = "task", required_unless_present = "all", value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Every task.
    #[arg(long, conflicts_with = "tasks")]
    pub all: bool,
    /// Folder of the task adapters: `<adapters-dir>/<task id>`.
    #[arg(long, env = "LORALAND_ADAPTERS_DIR", default_value = "adapters")]
    pub adapters_dir: PathBuf,
    /// Held-out examples per task.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Seed of the generated test split (the one `train` held out with the same seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Examples per batch (each runs on the base model and on the adapter, in one batch).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// GGUF quantization handling (the server's default: q8).
    #[arg(long, value_enum, default_value = "q8")]
    pub quant: QuantArg,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also score the base model with its output held to the task's format (the catalog's label set or JSON
    /// schema, by constrained decoding): a fairer baseline than free text for tasks whose answer is a label.
    #[arg(long)]
    pub constrained: bool,
}

/// One task's scores, in percent.
#[derive(Debug, Serialize)]
pub struct TaskScore {
    /// Task id.
    pub task: String,
    /// Metric name.
    pub metric: String,
    /// Examples scored.
    pub examples: usize,
    /// Base model.
    pub base: f64,
    /// With the task's adapter, if one was found.
    pub adapter: Option<f64>,
    /// The base model held to the task's output format (`--constrained`, tasks that have one).
    pub base_constrained: Option<f64>,
}

/// A test example, tokenized once: its prompt ids and the expected answer.
struct Item {
    prompt: Vec<u32>,
    expected: String,
}

/// Runs `loraland eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let ids: Vec<String> = match (args.tasks.is_empty(), args.all) {
        (false, _) => args.tasks.clone(),
        (true, true) => tasks::task_ids().into_iter().map(String::from).collect(),
        (true, false) => bail!("either --task or --all is needed"),
    };
    if args.adapter.is_some() && ids.len() != 1 {
        bail!("--adapter goes with exactly one --task");
    }
    let gens: Vec<Generator> = ids.iter().map(|id| tasks::generator(id)).collect::<anyhow::Result<_>>()?;
    // Each task's adapter, when it has one.
    let dirs: Vec<Option<PathBuf>> = gens
        .iter()
        .map(|g| match &args.adapter {
            Some(dir) => Some(dir.clone()),
            None => Some(args.adapters_dir.join(&g.task().id)).filter(|d| d.is_dir()),
        })
        .collect();
    let folders: Vec<PathBuf> = dirs.iter().flatten().cloned().collect();
    let mut config = EngineConfig::new(&args.model);
    config.load = LoadOptions { quant: args.quant.into(), ..Default::default() };
    // A chunk's rows (base, adapter and constrained base per example) in one batch, prefilled in one step.
    let rows = if args.constrained { 3 } else { 2 } * args.batch.max(1);
    config.max_batch_size = rows;
    // A chunk's requests, and the last chunk's until the engine thread has dropped them.
    config.max_queue = config.max_queue.max(2 * rows);
    config.max_new_tokens = gens.iter().map(|g| g.max_new_tokens).max().unwrap_or(1).max(1);
    let (engine, adapter_ids) =
        local::spawn(config, &folders).with_context(|| format!("cannot load {}", args.model.display()))?;
    let mut adapter_ids = adapter_ids.into_iter();
    let context = engine.handle().limits().context;
    let tok = engine.handle().tokenizer().clone();
    let mut scores = Vec::new();
    for (g, dir) in gens.iter().zip(&dirs) {
        let adapter = dir.as_ref().map(|_| adapter_ids.next().expect("one id per folder"));
        let examples = g.split(Split::Test, args.limit, args.seed);
        let before = examples.len();
        let mut test = Vec::with_capacity(before);
        for ex in examples {
            let prompt = tok.encode(&ex.prompt, true)?;
            if prompt.len() + g.max_new_tokens <= context {
                test.push(Item { prompt, expected: ex.completion });
            }
        }
        if test.len() < before {
            tracing::warn!(
                "{}: {} of {before} examples do not fit the model's context of {context}",
                g.task().id,
                before - test.len()
            );
        }
        if test.is_empty() {
            continue;
        }
        let constraint =
            args.constrained.then(|| g.task().constraint.as_ref().map(app::run::check::output_constraint)).flatten();
        let (mut base, mut tuned, mut held) = (0.0, 0.0, 0.0);
        for chunk in test.chunks(args.batch.max(1)) {
            let s = score_chunk(&engine, g, chunk, adapter.as_ref(), constraint.as_ref())?;
            base += s.base;
            tuned += s.adapter;
            held += s.base_constrained;
        }
        let n = test.len().max(1) as f64;
        let s = TaskScore {
            task: g.task().id.clone(),
            metric: g.metric.name(),
            examples: test.len(),
            base: 100.0 * base / n,
            adapter: adapter.as_ref().map(|_| 100.0 * tuned / n),
            base_constrained: constraint.as_ref().map(|_| 100.0 * held / n),
        };
        tracing::info!("{}: base {:.1}, adapter {:?}", s.task, s.base, s.adapter.map(|a| (a * 10.0).round() / 10.0));
        scores.push(s);
    }
    let table = markdown(&scores);
    #[allow(clippy::print_stdout)]
    {
        println!("{table}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": args.model.file_name().map(|n| n.to_string_lossy().into_owned()),
            "quant": format!("{:?}", args.quant).to_lowercase(),
            "limit": args.limit,
            "seed": args.seed,
            "data": "synthetic (loraland's task generators, test split)",
            "tasks": scores,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Summed scores of one chunk of examples.
struct ChunkScores {
    base: f64,
    adapter: f64,
    base_constrained: f64,
}

/// Scores of one chunk of examples, greedy, every example on the base model, on `adapter` (if any) and on the
/// base model held to `constraint` (if any), together in one batch.
fn score_chunk(
    engine: &local::Local,
    gen: &Generator,
    chunk: &[Item],
    adapter: Option<&AdapterId>,
    constraint: Option<&Constraint>,
) -> anyhow::Result<ChunkScores> {
    let rows: Vec<(Option<&AdapterId>, Option<&Constraint>)> = std::iter::once((None, None))
        .chain(adapter.map(|a| (Some(a), None)))
        .chain(constraint.map(|c| (None, Some(c))))
        .collect();
    let mut requests = Vec::new();
    for item in chunk {
        for &(adapter, constraint) in &rows {
            requests.push(GenerateRequest {
                prompt: Prompt::Tokens(item.prompt.clone()),
                adapter: adapter.cloned(),
                sampling: SamplingParams::greedy(),
                max_new_tokens: gen.max_new_tokens,
                constraint: constraint.cloned(),
                ..Default::default()
            });
        }
    }
    let outputs = engine.run(requests)?;
    let mut sums = ChunkScores { base: 0.0, adapter: 0.0, base_constrained: 0.0 };
    for (item, outs) in chunk.iter().zip(outputs.chunks(rows.len())) {
        for (&(adapter, constraint), out) in rows.iter().zip(outs) {
            let score = gen.metric.score(&out.text, &item.expected);
            match (adapter, constraint) {
                (Some(_), _) => sums.adapter += score,
                (None, Some(_)) => sums.base_constrained += score,
                (None, None) => sums.base += score,
            }
        }
    }
    Ok(sums)
}

/// The study-style table: per task base vs fine-tuned and the gain, then the averages over tasks with an adapter;
/// with `--constrained` scores, a column of the base model held to the task's format.
pub fn markdown(scores: &[TaskScore]) -> String {
    let held = scores.iter().any(|s| s.base_constrained.is_some());
    let mut out = match held {
        true => String::from(
            "| task | metric | n | base | base, constrained | fine-tuned | gain |\n|---|---|---:|---:|---:|---:|---:|\n",
        ),
        false => String::from("| task | metric | n | base | fine-tuned | gain |\n|---|---|---:|---:|---:|---:|\n"),
    };
    for s in scores {
        let (tuned, gain) = match s.adapter {
            Some(a) => (format!("{a:.1}"), format!("{:+.1}", a - s.base)),
            None => ("-".into(), "-".into()),
        };
        let constrained = match (held, s.base_constrained) {
            (false, _) => String::new(),
            (true, Some(c)) => format!(" {c:.1} |"),
            (true, None) => " - |".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} |{constrained} {tuned} | {gain} |\n",
            s.task, s.metric, s.examples, s.base
        ));
    }
    let tuned: Vec<&TaskScore> = scores.iter().filter(|s| s.adapter.is_some()).collect();
    if !tuned.is_empty() {
        let n = tuned.len() as f64;
        let base = tuned.iter().map(|s| s.base).sum::<f64>() / n;
        let ft = tuned.iter().filter_map(|s| s.adapter).sum::<f64>() / n;
        // The constrained average is over the tasks that have a format, beside their own free base.
        let constrained = match held {
            true => {
                let both: Vec<&&TaskScore> = tuned.iter().filter(|s| s.base_constrained.is_some()).collect();
                let c = both.iter().filter_map(|s| s.base_constrained).sum::<f64>() / both.len().max(1) as f64;
                format!(" {c:.1} ({} tasks) |", both.len())
            }
            false => String::new(),
        };
        out.push_str(&format!(
            "| **average** ({} tasks) | | | {base:.1} |{constrained} {ft:.1} | {:+.1} |\n",
            tuned.len(),
            ft - base
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_averages_the_tasks_with_an_adapter() {
        let s = |task: &str, base, adapter| TaskScore {
            task: task.into(),
            metric: "accuracy".into(),
            examples: 10,
            base,
            adapter,
            base_constrained: None,
        };
        let t = markdown(&[s("a", 10.0, Some(70.0)), s("b", 30.0, Some(50.0)), s("c", 90.0, None)]);
        assert!(t.contains("| a | accuracy | 10 | 10.0 | 70.0 | +60.0 |"), "{t}");
        assert!(t.contains("| c | accuracy | 10 | 90.0 | - | - |"), "{t}");
        assert!(t.contains("| **average** (2 tasks) | | | 20.0 | 60.0 | +40.0 |"), "{t}");
        let held = TaskScore { base_constrained: Some(40.0), ..s("a", 10.0, Some(70.0)) };
        let t = markdown(&[held, s("b", 30.0, Some(50.0))]);
        assert!(t.contains("| base | base, constrained | fine-tuned |"), "{t}");
        assert!(t.contains("| a | accuracy | 10 | 10.0 | 40.0 | 70.0 | +60.0 |"), "{t}");
        assert!(t.contains("| b | accuracy | 10 | 30.0 | - | 50.0 | +20.0 |"), "{t}");
        assert!(t.contains("| **average** (2 tasks) | | | 20.0 | 40.0 (1 tasks) | 60.0 | +40.0 |"), "{t}");
    }
}
