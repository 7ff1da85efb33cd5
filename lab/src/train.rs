//! `loraland train`: LoRA fine-tuning of the base model on a catalog task's generated data or on a JSONL file,
//! written as a PEFT adapter folder with a `training.json` that records how it was made.

use crate::tasks;
use anyhow::{bail, Context};
use candle_core::DType;
use clap::Args;
use engine::train::{self, Example, LoraShape, TrainConfig, TrainRun};
use engine::Module;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// `loraland train` options.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Base model: a GGUF file or a Hugging Face folder (dequantized to f32 and frozen).
    #[arg(long, env = "LORALAND_MODEL")]
    pub model: PathBuf,
    /// A catalog task id: train on its generated (synthetic) data.
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub task: Option<String>,
    /// A JSONL file of {"prompt": ..., "completion": ...} lines.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output adapter folder.
    #[arg(long)]
    pub out: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha (the delta is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Target modules, comma-separated (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
    #[arg(long, default_value = "q_proj,v_proj", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Longest example in tokens (prompt + completion); longer ones are skipped.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Fraction of the steps spent warming up the learning rate.
    #[arg(long, default_value_t = 0.03)]
    pub warmup: f64,
    /// Seed of the adapter's initial weights, the data order and the generated data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generated training examples (with --task).
    #[arg(long, default_value_t = 2000)]
    pub train_examples: usize,
    /// Held-out examples for the periodic eval loss (a generated test split with --task, the file's tail with --data).
    #[arg(long, default_value_t = 32)]
    pub eval_examples: usize,
    /// Report the eval loss every this many steps (0: only at the end).
    #[arg(long, default_value_t = 25)]
    pub eval_every: usize,
    /// Dtype of the saved factors.
    #[arg(long, value_enum, default_value = "bf16")]
    pub save_dtype: SaveDType,
    /// Hide the progress bar (log lines only).
    #[arg(long)]
    pub quiet: bool,
}

/// Dtype of the saved adapter.
#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDType {
    /// bfloat16: half the size, what the demo adapters use.
    Bf16,
    /// float32, exactly as trained.
    F32,
}

fn parse_targets(names: &[String]) -> anyhow::Result<Vec<Module>> {
    names
        .iter()
        .map(|n| {
            Module::from_name(n.trim())
                .with_context(|| format!("unknown target module {n:?}: expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"))
        })
        .collect()
}

/// The training and held-out examples for `args`.
fn examples(args: &TrainArgs) -> anyhow::Result<(Vec<Example>, Vec<Example>)> {
    if let Some(task) = &args.task {
        let gen = tasks::generator(task)?;
        return Ok((
            gen.split(tasks::Split::Train, args.train_examples, args.seed),
            gen.split(tasks::Split::Test, args.eval_examples, args.seed),
        ));
    }
    let path = args.data.as_ref().context("either --task or --data is needed")?;
    let mut all = train::read_jsonl(path)?;
    if all.len() < 2 {
        bail!("{}: need at least two examples (one to train on, one held out)", path.display());
    }
    let held = args.eval_examples.min(all.len() / 5).max(1);
    let eval = all.split_off(all.len() - held);
    Ok((all, eval))
}

/// Runs `loraland train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let shape = LoraShape { rank: args.rank, alpha: args.alpha, targets: parse_targets(&args.targets)? };
    let (train_ex, eval_ex) = examples(&args)?;
    let cfg = TrainConfig {
        shape,
        lr: args.lr,
        steps: args.steps,
        batch_size: args.batch,
        warmup: args.warmup,
        seed: args.seed,
        ..Default::default()
    };
    let mut run = TrainRun::prepare(&args.model, &train_ex, &eval_ex, args.seq_len, cfg)
        .map_err(|e| match e {
            engine::Error::NoExampleFits { examples, seq_len } => anyhow::anyhow!(
                "all {examples} training examples are empty or longer than --seq-len {seq_len} tokens: raise --seq-len"
            ),
            e => e.into(),
        })
        .with_context(|| format!("cannot train on {}", args.model.display()))?;
    for (skipped, what) in [(run.skipped_train, "training"), (run.skipped_held_out, "held-out")] {
        if skipped > 0 {
            tracing::warn!("{skipped} {what} examples longer than {} tokens (or empty) were skipped", args.seq_len);
        }
    }
    tracing::info!(
        "training {} LoRA parameters on {} examples ({} held out), {} steps of {}",
        run.trainer.lora().num_params(),
        train_ex.len() - run.skipped_train,
        run.held_out.len(),
        args.steps,
        args.batch
    );
    let initial_eval = run.held_out_loss()?;
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(args.steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("a valid template"),
    );
    let start = Instant::now();
    let (mut tokens, mut last_loss, mut last_eval) = (0usize, f32::NAN, initial_eval);
    for step in 1..=args.steps {
        let r = run.trainer.step()?;
        tokens += r.tokens;
        last_loss = r.loss;
        if !r.loss.is_finite() {
            bail!("the loss became {} at step {step}: lower --lr", r.loss);
        }
        if args.eval_every > 0 && step % args.eval_every == 0 && step < args.steps {
            last_eval = run.held_out_loss()?;
            bar.suspend(|| tracing::info!("step {step}: loss {:.4}, eval loss {last_eval:.4}", r.loss));
        }
        let tps = tokens as f64 / start.elapsed().as_secs_f64();
        bar.set_message(format!("loss {:.4} lr {:.2e} {tps:.0} tok/s", r.loss, r.lr));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let final_eval = run.held_out_loss()?;
    last_eval = if final_eval.is_finite() { final_eval } else { last_eval };
    let dtype = match args.save_dtype {
        SaveDType::Bf16 => DType::BF16,
        SaveDType::F32 => DType::F32,
    };
    run.save(&args.out, dtype)?;
    write_record(&args, initial_eval, last_eval, last_loss, tokens, seconds)?;
    tracing::info!(
        "saved {}: eval loss {initial_eval:.4} -> {last_eval:.4}, {tokens} tokens in {seconds:.1} s ({:.0} tokens/s)",
        args.out.display(),
        tokens as f64 / seconds
    );
    Ok(())
}

/// `training.json` beside the adapter: the command line, the data source and the outcome.
fn write_record(
    args: &TrainArgs,
    eval_before: f32,
    eval_after: f32,
    train_loss: f32,
    tokens: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    let record = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "base_model": args.model.file_name().map(|n| n.to_string_lossy().into_owned()),
        "data": match (&args.task, &args.data) {
            (Some(task), _) => format!("synthetic data generated for task {task} (seed {})", args.seed),
            (_, Some(path)) => path.display().to_string(),
            _ => String::new(),
        },
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": args.targets,
        "lr": args.lr,
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "save_dtype": args.save_dtype,
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "final_train_loss": train_loss,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens as f64 / seconds,
    });
    let path = args.out.join("training.json");
    std::fs::write(&path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}
