//! `loraland generate`: one prompt through the base model and/or several adapters, together in the engine's
//! continuous batch, from the command line.

use anyhow::bail;
use clap::Args;
use engine::{AdapterId, ChatMessage, EngineConfig, GenerateRequest, Prompt, SamplingParams};
use server::args::{DeviceArgs, QuantArg};
use std::path::PathBuf;

/// `loraland generate` options.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Base model: a GGUF file or a Hugging Face folder.
    #[arg(long, env = "LORALAND_MODEL")]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder; repeat for several rows of one mixed batch.
    #[arg(long = "adapter")]
    pub adapters: Vec<PathBuf>,
    /// Also run a row on the base model (the default when no adapter is given).
    #[arg(long)]
    pub base: bool,
    /// Prompt text.
    #[arg(long, required_unless_present = "token_ids", conflicts_with = "token_ids")]
    pub prompt: Option<String>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long, requires = "prompt")]
    pub chat: bool,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<u32>>,
    /// Most tokens to generate per row.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Greedy decoding (the default when no temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    /// Sampling temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Repetition penalty.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop sequence; repeat for several.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Device and dtype.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// GGUF quantization handling.
    #[arg(long, value_enum, default_value = "keep")]
    pub quant: QuantArg,
    /// Print one JSON object per row: {"adapter", "tokens", "text", "finish_reason"}.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let mut config = EngineConfig::new(&args.model);
    config.load = args.device.load_options(args.quant.into())?;
    let rows = usize::from(args.base || args.adapters.is_empty()) + args.adapters.len();
    config.max_batch_size = rows.max(1);
    config.max_new_tokens = args.max_new_tokens.max(1);
    let (engine, ids) = crate::local::spawn(config, &args.adapters)?;
    let tokenizer = engine.handle().tokenizer();
    let prompt = match (&args.prompt, &args.token_ids) {
        (_, Some(ids)) => Prompt::Tokens(ids.clone()),
        (Some(text), None) if args.chat => {
            let chat = [ChatMessage { role: "user".into(), content: text.clone() }];
            Prompt::Text(tokenizer.apply_chat_template(&chat, true)?)
        }
        (Some(text), None) => Prompt::Text(text.clone()),
        (None, None) => bail!("give --prompt or --token-ids"),
    };
    let sampling = SamplingParams {
        temperature: if args.greedy { None } else { args.temperature },
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let mut adapters: Vec<Option<AdapterId>> = Vec::new();
    if args.base || args.adapters.is_empty() {
        adapters.push(None);
    }
    adapters.extend(ids.into_iter().map(Some));
    let requests = adapters
        .iter()
        .map(|adapter| GenerateRequest {
            prompt: prompt.clone(),
            adapter: adapter.clone(),
            sampling: sampling.clone(),
            max_new_tokens: args.max_new_tokens,
            stop: args.stop.clone(),
            ..Default::default()
        })
        .collect();
    let outputs = engine.run(requests)?;
    for (adapter, out) in adapters.iter().zip(outputs) {
        let adapter = adapter.as_ref().and_then(|id| engine.folder(id)).map(|dir| dir.display().to_string());
        if args.json {
            let line = serde_json::json!({
                "adapter": adapter,
                "tokens": out.tokens,
                "text": out.text,
                "finish_reason": out.finish_reason,
            });
            crate::print_line(&line.to_string());
        } else {
            crate::print_line(&format!("=== {} ===\n{}", adapter.as_deref().unwrap_or("base"), out.text));
        }
    }
    Ok(())
}
