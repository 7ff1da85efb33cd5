//! K-quant bases with LoRA adapters: the tiny Mistral-shaped GGUF of the SentencePiece fixture (f32, every width a
//! multiple of 256), requantized here as llama.cpp's Q4_K_M, Q5_K_M and Q6_K files are (the K type for most
//! projections, Q6_K for `attn_v`, `ffn_down` and `output` in the _M mixes), runs base and adapter rows in one mixed
//! batch with the K-quant blocks kept as stored. Each row's next-token distribution stays within a KL bound of the
//! f32 file's, and the adapter moves the quantized model as it moves the f32 one (the adapter's q/k rows permuted
//! for the GGUF's layout as for any GGUF base). Needs the fixture: `make spm-fixture` (or LORALAND_SPM_FIXTURE).

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, IndexOp, Tensor};
use common::spm_fixture;
use engine::adapter::LoraAdapter;
use engine::{AdapterBank, LoadOptions, Logits, Model, QuantMode, SeqInput, Tokenizer};
use std::path::Path;
use std::sync::Arc;

/// Writes `src` to `dst` with every 2-D weight quantized: `main` for most, `heavy` for `attn_v`, `ffn_down` and
/// `output` (llama.cpp's _M mixes give those more bits).
fn requantize(src: &Path, dst: &Path, main: GgmlDType, heavy: GgmlDType) {
    let mut file = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let t = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let t = if t.shape().rank() == 2 {
            let heavy_one =
                ["attn_v.weight", "ffn_down.weight"].iter().any(|s| name.ends_with(s)) || name == "output.weight";
            let dtype = if heavy_one { heavy } else { main };
            QTensor::quantize(&t.dequantize(&Device::Cpu).unwrap(), dtype).unwrap()
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
}

/// Last-position logits of every prompt on the base model and on the adapter, all rows in one mixed batch:
/// row 2i is prompt i on the base, row 2i+1 on the adapter.
fn mixed_logits(model_path: &Path, quant: QuantMode, prompts: &[Vec<u32>]) -> Tensor {
    let opts = LoadOptions { quant, ..Default::default() };
    let model = Model::load(model_path, &opts).unwrap();
    let adapter = LoraAdapter::load(&spm_fixture().join("adapters/all_r8"), &model.adapter_target()).unwrap();
    let bank = AdapterBank::new(vec![Arc::new(adapter)], model.config().num_hidden_layers).unwrap();
    let mut caches: Vec<_> = (0..2 * prompts.len()).map(|_| model.new_cache()).collect();
    let mut seqs: Vec<SeqInput<'_>> = caches
        .iter_mut()
        .enumerate()
        .map(|(row, cache)| SeqInput { tokens: &prompts[row / 2], cache, adapter: (row % 2 == 1).then_some(0) })
        .collect();
    model.forward(&mut seqs, &bank, Logits::Last).unwrap()
}

/// KL(p || q) of the softmax distributions of two logit vectors.
fn kl(p_logits: &Tensor, q_logits: &Tensor) -> f32 {
    let p = candle_nn::ops::log_softmax(p_logits, 0).unwrap();
    let q = candle_nn::ops::log_softmax(q_logits, 0).unwrap();
    (p.exp().unwrap() * (p - q).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn k_quant_bases_with_an_adapter_stay_within_kl_of_the_f32_file() {
    let src = spm_fixture().join("tiny.gguf");
    let tok = Tokenizer::for_model(&src).unwrap();
    let prompts: Vec<Vec<u32>> = ["The capital of France is", "[INST] Name three colours. [/INST]", "12 + 30 ="]
        .iter()
        .map(|p| tok.encode(p, true).unwrap())
        .collect();
    let reference = mixed_logits(&src, QuantMode::Keep, &prompts);
    // The adapter's own effect on the f32 model: what quantization must not drown.
    let moved: Vec<f32> =
        (0..prompts.len()).map(|i| kl(&reference.i(2 * i).unwrap(), &reference.i(2 * i + 1).unwrap())).collect();
    eprintln!("f32: KL(base || adapter) per prompt {moved:?}");
    let tmp = tempfile::tempdir().unwrap();
    for (name, main, heavy, max_kl) in [
        // Measured (this fixture, every row): Q8_0 0.001-0.002, Q4_K_M 0.09-0.16, Q5_K_M 0.02-0.035, Q6_K
        // 0.012-0.017: each bit fewer multiplies the KL by about four, as quantization noise does. Random
        // Gaussian weights have none of a trained model's redundancy, so these are larger than llama.cpp's KL
        // figures for real 7B models; the bounds leave about 2x.
        ("Q8_0", GgmlDType::Q8_0, GgmlDType::Q8_0, 0.005),
        ("Q4_K_M", GgmlDType::Q4K, GgmlDType::Q6K, 0.3),
        ("Q5_K_M", GgmlDType::Q5K, GgmlDType::Q6K, 0.07),
        ("Q6_K", GgmlDType::Q6K, GgmlDType::Q6K, 0.035),
    ] {
        let path = tmp.path().join(format!("{name}.gguf"));
        requantize(&src, &path, main, heavy);
        let quant = mixed_logits(&path, QuantMode::Keep, &prompts);
        // The K-quant kernels (blocks kept; Q4_K and Q6_K on our VNNI kernels with Q8_0 activations where the CPU
        // has AVX-512 VNNI, candle's with Q8_K activations elsewhere) against the same weights dequantized and
        // multiplied in f32: what the kernels themselves add, apart from the weights' quantization.
        let dequantized = mixed_logits(&path, QuantMode::Dequantize, &prompts);
        let kernel: Vec<f32> =
            (0..2 * prompts.len()).map(|row| kl(&dequantized.i(row).unwrap(), &quant.i(row).unwrap())).collect();
        eprintln!("{name}: KL between the kernels and the dequantized weights per row {kernel:.5?}");
        for (row, d) in kernel.iter().enumerate() {
            assert!(*d < 0.01, "{name} row {row}: KL {d} between the kernels and the dequantized weights");
        }
        let kls: Vec<f32> =
            (0..2 * prompts.len()).map(|row| kl(&reference.i(row).unwrap(), &quant.i(row).unwrap())).collect();
        eprintln!("{name}: KL to the f32 file per row (base, adapter for each prompt) {kls:.4?}");
        for (row, d) in kls.iter().enumerate() {
            let what = if row % 2 == 1 { "adapter" } else { "base" };
            assert!(*d < max_kl, "{name} prompt {} {what}: KL {d} to the f32 file's distribution", row / 2);
        }
        for (i, &m) in moved.iter().enumerate() {
            let q = kl(&quant.i(2 * i).unwrap(), &quant.i(2 * i + 1).unwrap());
            assert!(q > 0.5 * m && q < 2.0 * m, "{name} prompt {i}: the adapter moves it by {q}, the f32 file by {m}");
        }
    }
}
