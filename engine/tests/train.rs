//! The LoRA trainer: its forward pass against the transformers reference, its gradients against finite
//! differences, a short run that learns, and the saved adapter in PEFT's format, reloaded by the engine with the
//! trainer's own logits (tiny fixtures; SmolLM2's GGUF for the q/k row layout).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use common::{fixture, max_abs_diff, tiny_set_reference, token_rows};
use engine::adapter::LoraAdapter;
use engine::model::RopeStyle;
use engine::train::{Batch, Encoded, FrozenModel, LoraParams, LoraShape, TrainConfig, Trainer};
use engine::{AdapterBank, LoadOptions, Logits, Model, Module, QuantMode, SeqInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;

fn load(name: &str, dtype: DType) -> Model {
    Model::load(&fixture(&format!("{name}/base")), &LoadOptions { dtype, ..Default::default() }).unwrap()
}

/// Logits at every position of one sequence through the trainer's forward.
fn trainer_logits(frozen: &FrozenModel, lora: &LoraParams, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, frozen.device()).unwrap().unsqueeze(0).unwrap();
    let hidden = frozen.hidden(&t, lora).unwrap();
    let rows = Tensor::arange(0u32, ids.len() as u32, frozen.device()).unwrap();
    frozen.logits_at(&hidden, &rows).unwrap().to_dtype(DType::F32).unwrap()
}

/// Logits at every position of one sequence through the engine, with `bank`'s first adapter (or none).
fn engine_logits(model: &Model, bank: &AdapterBank, ids: &[u32], adapter: Option<usize>) -> Tensor {
    let mut cache = model.new_cache();
    let mut seqs = [SeqInput { tokens: ids, cache: &mut cache, adapter }];
    model.forward(&mut seqs, bank, Logits::All).unwrap()
}

#[test]
fn forward_matches_transformers_on_both_tiny_models() {
    for name in ["tiny-llama", "tiny-mistral"] {
        let model = load(name, DType::F32);
        let frozen = FrozenModel::new(&model, DType::F32).unwrap();
        let lora = LoraParams::init(model.config(), LoraShape::default(), DType::F32, &Device::Cpu, 0).unwrap();
        let reference = tiny_set_reference(name);
        let ids = &token_rows(&reference["input_ids"])[0];
        let expected = reference["logits"].i(0).unwrap();
        // B starts at zero: a fresh adapter is the base model (row 0 of the reference batch).
        let diff = max_abs_diff(&trainer_logits(&frozen, &lora, ids), &expected);
        assert!(diff < 1e-4, "{name}: max |diff| {diff}");
    }
}

/// Uniform values in [-0.05, 0.05) from a seeded generator, so that every run checks the same numbers.
fn seeded(rng: &mut StdRng, shape: &candle_core::Shape, dtype: DType) -> Tensor {
    let values: Vec<f64> = (0..shape.elem_count()).map(|_| (rng.random::<f64>() - 0.5) * 0.1).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// Sets one element of a variable.
fn poke(var: &Var, index: usize, value: f64) {
    let shape = var.as_tensor().shape().clone();
    let mut data = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    data[index] = value;
    var.set(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap();
}

fn element(t: &Tensor, index: usize) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()[index]
}

#[test]
fn gradients_match_finite_differences() {
    let model = load("tiny-llama", DType::F64);
    let frozen = FrozenModel::new(&model, DType::F64).unwrap();
    let shape = LoraShape { rank: 4, alpha: 8.0, targets: vec![Module::Q, Module::V, Module::Down] };
    let lora = LoraParams::init(model.config(), shape, DType::F64, &Device::Cpu, 7).unwrap();
    // Non-zero B so that A has a gradient too.
    let mut rng = StdRng::seed_from_u64(11);
    for v in lora.vars().iter().skip(1).step_by(2) {
        v.set(&seeded(&mut rng, v.shape(), DType::F64)).unwrap();
    }
    let a = Encoded { ids: vec![3, 17, 42, 9, 100, 5, 77], prompt_len: 4 };
    let b = Encoded { ids: vec![8, 1, 64, 12, 33], prompt_len: 2 };
    let batch = Batch::new(&[&a, &b], 0, &Device::Cpu).unwrap();
    let loss = frozen.loss(&batch, &lora).unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-6;
    let mut checked = 0;
    for (layer, module) in [(0, Module::Q), (1, Module::V), (1, Module::Down)] {
        let pair = lora.pair(layer, module).unwrap();
        for var in [&pair.a, &pair.b] {
            let grad = grads.get(var.as_tensor()).expect("a gradient for every factor");
            for index in [0, var.elem_count() / 3, var.elem_count() - 1] {
                let x = element(var.as_tensor(), index);
                poke(var, index, x + eps);
                let up = frozen.loss(&batch, &lora).unwrap().to_scalar::<f64>().unwrap();
                poke(var, index, x - eps);
                let down = frozen.loss(&batch, &lora).unwrap().to_scalar::<f64>().unwrap();
                poke(var, index, x);
                let numeric = (up - down) / (2.0 * eps);
                let analytic = element(grad, index);
                // Central differences in f64 at eps 1e-6 carry ~1e-10 of rounding noise: the tolerance is relative
                // plus that floor, and every checked gradient is at least 100x the floor.
                let tolerance = 1e-5 * numeric.abs() + 1e-9;
                assert!(
                    (numeric - analytic).abs() < tolerance,
                    "layer {layer} {module:?} [{index}]: numeric {numeric} analytic {analytic}"
                );
                assert!(analytic.abs() > 1e-7, "layer {layer} {module:?} [{index}]: too small to check ({analytic})");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

/// A toy classification task the tiny model cannot do before training: the completion is one of four label tokens,
/// chosen by the prompt's class token, after two filler tokens that vary.
fn toy_task(n: usize, offset: u32) -> Vec<Encoded> {
    (0..n as u32)
        .map(|i| {
            let (filler, class) = (20 + (i * 7 + offset) % 40, 10 + i % 8);
            Encoded { ids: vec![1, filler, filler + 1, class, 4, 150 + (class % 4) * 11], prompt_len: 5 }
        })
        .collect()
}

#[test]
fn a_short_run_learns_and_the_saved_adapter_reloads_with_the_same_logits() {
    let model = load("tiny-llama", DType::F32);
    let frozen = FrozenModel::new(&model, DType::F32).unwrap();
    let config = TrainConfig { lr: 3e-2, steps: 60, batch_size: 8, seed: 3, ..Default::default() };
    let mut trainer = Trainer::new(frozen, toy_task(48, 0), config, 0).unwrap();
    let held_out = toy_task(16, 3);
    let before = trainer.eval_loss(&held_out).unwrap();
    let mut last = Vec::new();
    for _ in 0..60 {
        let r = trainer.step().unwrap();
        assert!(r.loss.is_finite() && r.grad_norm.is_finite());
        last.push(r.loss);
    }
    let after = trainer.eval_loss(&held_out).unwrap();
    // The fixture's random embeddings are tiny, which caps how confident any logit can get (about 3.2 nats of
    // loss at best over its 320 tokens), so the bar is a clear drop and the right label on top, not a loss near 0.
    assert!(after < before - 1.5, "held-out loss {before} -> {after}");
    let recent: f32 = last[50..].iter().sum::<f32>() / 10.0;
    assert!(recent < last[0] - 1.5, "training loss {} -> {recent}", last[0]);
    let right = held_out
        .iter()
        .filter(|e| {
            let logits = trainer_logits(trainer.model(), trainer.lora(), &e.ids[..e.prompt_len]);
            let last: Vec<f32> = logits.i(e.prompt_len - 1).unwrap().to_vec1().unwrap();
            let best = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
            best as u32 == e.ids[e.prompt_len]
        })
        .count();
    assert!(right >= 15, "{right} of 16 held-out labels right");

    // Saved in f32 and loaded by the engine, the adapter gives the trainer's logits.
    let dir = tempfile::tempdir().unwrap();
    let rope = trainer.model().rope_style();
    trainer.lora().save(dir.path(), model.config(), rope, "tiny-llama", DType::F32).unwrap();
    let adapter = LoraAdapter::load(dir.path(), &model.adapter_target()).unwrap();
    let bank = AdapterBank::new(vec![Arc::new(adapter)], model.config().num_hidden_layers).unwrap();
    let ids = [1, 23, 3, 4, 23, 23];
    let ours = engine_logits(&model, &bank, &ids, Some(0));
    let theirs = trainer_logits(trainer.model(), trainer.lora(), &ids);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff < 1e-4, "engine vs trainer: {diff}");
    assert!(max_abs_diff(&ours, &engine_logits(&model, &bank, &ids, None)) > 1e-2, "training changed nothing");
}

#[test]
fn saved_adapter_has_the_names_shapes_and_config_keys_peft_writes() {
    let model = load("tiny-llama", DType::F32);
    let lora = LoraParams::init(model.config(), LoraShape::default(), DType::F32, &Device::Cpu, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lora.save(dir.path(), model.config(), model.adapter_target().rope_style, "tiny-llama", DType::BF16).unwrap();
    let peft = fixture("tiny-llama/adapters/qv_r8");
    let read_json = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let ours = read_json(dir.path().join("adapter_config.json"));
    let theirs = read_json(peft.join("adapter_config.json"));
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs));
    for k in ["r", "lora_alpha", "target_modules", "peft_type", "task_type", "use_rslora", "use_dora", "bias"] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    let load = |p: std::path::PathBuf| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let ours = load(dir.path().join("adapter_model.safetensors"));
    let theirs = load(peft.join("adapter_model.safetensors"));
    let mut names: Vec<_> = ours.keys().collect();
    names.sort();
    let mut expected: Vec<_> = theirs.keys().collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, t) in &ours {
        assert_eq!(t.dims(), theirs[name].dims(), "{name}");
        assert_eq!(t.dtype(), DType::BF16, "{name}");
    }
}

#[test]
fn gguf_base_saves_q_rows_in_hugging_face_order() {
    // SmolLM2's GGUF stores q/k rows permuted for interleaved RoPE; the trainer learns B in that layout and must
    // save it in Hugging Face's, which the engine's loader permutes back.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run `make fetch-model` first", path.display());
    let opts = LoadOptions { quant: QuantMode::Dequantize, ..Default::default() };
    let model = Model::load(&path, &opts).unwrap();
    let frozen = FrozenModel::new(&model, DType::F32).unwrap();
    assert_eq!(frozen.rope_style(), RopeStyle::Interleaved);
    let lora = LoraParams::init(model.config(), LoraShape::default(), DType::F32, &Device::Cpu, 1).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for layer in 0..model.config().num_hidden_layers {
        for m in [Module::Q, Module::V] {
            let b = &lora.pair(layer, m).unwrap().b;
            b.set(&seeded(&mut rng, b.shape(), DType::F32)).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    lora.save(dir.path(), model.config(), frozen.rope_style(), "SmolLM2-135M-Instruct", DType::F32).unwrap();
    let adapter = LoraAdapter::load(dir.path(), &model.adapter_target()).unwrap();
    let bank = AdapterBank::new(vec![Arc::new(adapter)], model.config().num_hidden_layers).unwrap();
    let ids = [1, 504, 3458, 282, 4649, 314, 253, 1345];
    let ours = engine_logits(&model, &bank, &ids, Some(0));
    let theirs = trainer_logits(&frozen, &lora, &ids);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff < 1e-3, "engine vs trainer: {diff}");
    assert!(max_abs_diff(&ours, &engine_logits(&model, &bank, &ids, None)) > 1e-1, "the adapter changed nothing");
}
