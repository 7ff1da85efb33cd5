//! `loraland train` then `loraland eval` end to end on the tiny fixture model: a task's synthetic data, a saved
//! PEFT folder with its training record, and the eval table's JSON for base and adapter.

use lab::eval::{self, EvalArgs};
use lab::train::{self, SaveDType, TrainArgs};
use server::args::QuantArg;
use std::path::PathBuf;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama/base")
}

fn train_args(out: PathBuf) -> TrainArgs {
    TrainArgs {
        model: tiny(),
        task: Some("glue_sst2".into()),
        data: None,
        out,
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
        lr: 1e-2,
        steps: 6,
        batch: 4,
        seq_len: 256,
        warmup: 0.1,
        seed: 5,
        train_examples: 64,
        eval_examples: 8,
        eval_every: 3,
        save_dtype: SaveDType::Bf16,
        quiet: true,
    }
}

#[test]
fn train_writes_a_peft_folder_and_eval_scores_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("glue_sst2");
    train::run(train_args(out.clone())).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    assert_eq!(record["steps"], 6);
    assert!(record["data"].as_str().unwrap().starts_with("synthetic data generated for task glue_sst2"));
    assert!(record["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(record["eval_loss_after"].as_f64().unwrap().is_finite());

    let json = dir.path().join("eval.json");
    let args = EvalArgs {
        model: tiny(),
        adapter: None,
        tasks: Vec::new(),
        all: true,
        adapters_dir: dir.path().to_path_buf(),
        limit: 4,
        seed: 5,
        batch: 4,
        quant: QuantArg::Keep,
        json: Some(json.clone()),
        constrained: true,
    };
    eval::run(args).unwrap();
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    // The tiny model's context (256) leaves out the tasks with long templates; the rest are scored.
    let tasks = result["tasks"].as_array().unwrap();
    assert!(tasks.len() >= 5, "{tasks:?}");
    assert!(tasks.iter().any(|t| t["task"] == "glue_sst2"));
    for t in tasks {
        let expected_adapter = t["task"] == "glue_sst2";
        assert_eq!(t["adapter"].is_number(), expected_adapter, "{t}");
        assert!((0.0..=100.0).contains(&t["base"].as_f64().unwrap()), "{t}");
        assert!(t["examples"].as_u64().unwrap() > 0, "{t}");
        // The base model held to the task's format, for the tasks that have one.
        let has_format = catalog::task(t["task"].as_str().unwrap()).unwrap().constraint.is_some();
        assert_eq!(t["base_constrained"].is_number(), has_format, "{t}");
    }
    assert!(tasks.iter().any(|t| t["base_constrained"].is_number()), "some scored task has a format");
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = train_args(dir.path().join("x"));
    args.task = Some("nope".into());
    let err = format!("{:#}", train::run(args).unwrap_err());
    assert!(err.contains("unknown task \"nope\""), "{err}");

    let mut args = train_args(dir.path().join("x"));
    args.targets = vec!["qq_proj".into()];
    let err = format!("{:#}", train::run(args).unwrap_err());
    assert!(err.contains("unknown target module \"qq_proj\""), "{err}");

    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"a\"}\n").unwrap();
    let mut args = train_args(dir.path().join("x"));
    args.task = None;
    args.data = Some(data);
    let err = format!("{:#}", train::run(args).unwrap_err());
    assert!(err.contains("d.jsonl line 1"), "{err}");

    let mut args = train_args(dir.path().join("x"));
    args.seq_len = 4;
    let err = format!("{:#}", train::run(args).unwrap_err());
    assert!(err.contains("longer than --seq-len 4 tokens: raise --seq-len"), "{err}");
    assert!(!dir.path().join("x").exists(), "nothing written on failure");
}
