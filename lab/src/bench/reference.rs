//! Batch-1 decode speed of candle-transformers' own `quantized_llama` on the same GGUF, the reference our engine
//! is compared with in `loraland bench decode --reference` (built with `--features bench-reference`).

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use std::path::Path;
use std::time::Instant;

/// Tokens/s of `steps` greedy decode steps after a `prompt_len`-token prefill.
pub fn decode_rate(model: &Path, prompt_len: usize, steps: usize) -> anyhow::Result<f64> {
    let mut file = std::fs::File::open(model)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut weights = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    let prompt: Vec<u32> = (0..prompt_len).map(|j| (j * 7) as u32 + 100).collect();
    let logits = weights.forward(&Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?, 0)?;
    let mut next: u32 = logits.squeeze(0)?.argmax(0)?.to_scalar()?;
    let mut pos = prompt_len;
    let mut step = |next: &mut u32, pos: &mut usize| -> anyhow::Result<()> {
        let logits = weights.forward(&Tensor::new(&[*next], &Device::Cpu)?.unsqueeze(0)?, *pos)?;
        *next = logits.squeeze(0)?.argmax(0)?.to_scalar()?;
        *pos += 1;
        Ok(())
    };
    step(&mut next, &mut pos)?; // warm-up
    let start = Instant::now();
    for _ in 0..steps {
        step(&mut next, &mut pos)?;
    }
    Ok(steps as f64 / start.elapsed().as_secs_f64())
}
