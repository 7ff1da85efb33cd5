#!/usr/bin/env python3
"""The PyTorch + PEFT side of `loraland bench load --random-model`: the same shapes with transformers' own model and
PEFT's mixed-adapter batches (`generate(..., adapter_names=[...])`), for comparison in one device run.

A Mistral-7B-shaped MistralForCausalLM with random weights (or the CPU-sized `mistral-tiny`), 25 random r=8 q/v LoRA
adapters, prompts of 100 random tokens, 100 new tokens (EOS off), for each stream count: every row on the base
model, on one adapter, and each row on a different adapter. HF `generate` runs a static batch (no continuous
batching), so `streams` rows start and end together. Prints a Markdown table: tokens/s, the time to the first token
(a 1-token generate of the same batch) and the decode step ((t(100) - t(1)) / 99).

Needs torch, transformers and peft (the GPU machine has them). Not part of the Rust build or of `make test`.
"""

import argparse
import sys
import time

PRESETS = {
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128),
    "mistral-tiny": dict(hidden_size=256, intermediate_size=896, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=32),
}
ADAPTERS = 25


def build(preset, device, dtype):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=32768,
                        sliding_window=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=None,
                        pad_token_id=0, **PRESETS[preset])
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM(cfg).to(dtype)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(model, lora, adapter_name="a0")
    for i in range(1, ADAPTERS):
        model.add_adapter(f"a{i}", lora)
    model.to(device)
    model.eval()  # PEFT refuses mixed-adapter batches in training mode; get_peft_model leaves it there
    return model


def timed_generate(model, ids, names, new_tokens, sync):
    import torch

    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if names is not None:
        kwargs["adapter_names"] = names
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    sync()
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mistral-7b", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=100)
    args = ap.parse_args()

    import peft
    import torch
    import transformers

    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    model = build(args.preset, args.device, dtype)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"PEFT reference: random {args.preset} in {args.dtype} on {gpu}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}, {ADAPTERS} random r=8 q/v adapters, "
          f"prompts {args.prompt_tokens} tokens, {args.new_tokens} new tokens, static batches\n")
    print("| streams | adapters | tokens/s | vs base | TTFT ms | decode step ms |")
    print("|---:|---|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    timed_generate(model, torch.randint(3, 32000, (1, 16), generator=gen).to(args.device), ["__base__"], 4, sync)
    for n in [int(s) for s in args.streams.split(",")]:
        ids = torch.randint(3, 32000, (n, args.prompt_tokens), generator=gen).to(args.device)
        base_rate = None
        for label, names in [("base only", ["__base__"] * n), ("one adapter", ["a0"] * n),
                             ("each a different one", [f"a{i % ADAPTERS}" for i in range(n)])]:
            first = timed_generate(model, ids, names, 1, sync)
            full = timed_generate(model, ids, names, args.new_tokens, sync)
            rate = n * args.new_tokens / full
            base_rate = base_rate or rate
            step = (full - first) / (args.new_tokens - 1)
            print(f"| {n} | {label} | {rate:.1f} | {rate / base_rate:.2f} | {first * 1e3:.0f} | {step * 1e3:.2f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
