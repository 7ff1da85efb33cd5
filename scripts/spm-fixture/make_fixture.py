"""Makes the SentencePiece GGUF fixture in OUT (argv[1]):

- tiny.gguf: a tiny random-weight Mistral (llama architecture, GQA; every width a multiple of 256, as K-quants
  need) in f32, whose tokenizer metadata is Mistral-7B-v0.1's
  tokenizer.model (shipped in the PyPI package mistral-common as tokenizer.model.v1), laid out as llama.cpp's
  converter (convert_hf_to_gguf.py, `_create_vocab_sentencepiece`) writes it: tokens, scores, token types, BOS, EOS,
  UNK, add-BOS, and Mistral-7B-Instruct's chat template.
- adapters/all_r8: a PEFT LoRA adapter for it (r=8, alpha=16, all seven projections, A and B random).
- reference.json: for each test string, the token ids transformers' slow LlamaTokenizer (sentencepiece, legacy, as
  Mistral-7B-v0.1's tokenizer config has it) gives with BOS, and sentencepiece's decoding of them; the chat template
  rendered by transformers' apply_chat_template for a conversation, and its token ids.
"""

import json
import os
import sys

import gguf
import numpy as np
import sentencepiece as spm
import transformers
from safetensors.numpy import save_file
from transformers import LlamaTokenizer

from mistral_spm import CHAT_TEMPLATE, MODEL, add_tokenizer, load

OUT = sys.argv[1]

# Accents, digits, whitespace runs, tabs and newlines, emoji, scripts and symbols outside the vocabulary (byte
# fallback), text around special-token strings, and the edges (empty, spaces only, leading and trailing spaces).
TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    "café naïve résumé Ångström Zürich señor",
    "12345 + 678 = 13023; 3.14159, 1e-9, 0x1F",
    "  two  spaces   three    four",
    "\ttab\tand\nnew\n\nlines\r\n",
    " leading space",
    "trailing space ",
    "   ",
    "",
    "emoji 🦀🚀🎉 and 👩‍👩‍👧 family",
    "日本語のテキストと中文文本",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ĳ ẞ ℌ ⅷ",
    "Привет, мир! Γειά σου Κόσμε",
    "def f(x):\n    return x**2  # squared",
    '{"name": "LoRA", "rank": 8, "tags": ["a", "b"]}',
    "</s> <s>[INST] special-token text [/INST]",
    "<unk> stays a token",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

CONVERSATION = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? 🇮🇹"},
]


def write_gguf(path, proto, sp):
    rng = np.random.default_rng(0)
    vocab, hidden, ffn, layers, heads, kv_heads = sp.get_piece_size(), 256, 512, 2, 4, 2
    head_dim = hidden // heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-mistral-spm")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    add_tokenizer(w, proto, sp)

    def tensor(name, *shape, scale=0.05):
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden, scale=0.5)
    for layer in range(layers):
        b = f"blk.{layer}."
        w.add_tensor(b + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(b + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(b + "attn_q.weight", heads * head_dim, hidden)
        tensor(b + "attn_k.weight", kv_heads * head_dim, hidden)
        tensor(b + "attn_v.weight", kv_heads * head_dim, hidden)
        tensor(b + "attn_output.weight", hidden, heads * head_dim)
        tensor(b + "ffn_gate.weight", ffn, hidden)
        tensor(b + "ffn_up.weight", ffn, hidden)
        tensor(b + "ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    # Large enough that the next-token distribution is peaked, so that quantization error shows in its KL.
    tensor("output.weight", vocab, hidden, scale=0.2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_adapter(path, hidden=256, ffn=512, layers=2, heads=4, kv_heads=2, r=8):
    rng = np.random.default_rng(1)
    head_dim = hidden // heads
    shapes = {  # (in, out) of each projection, as PEFT names them
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.v_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, ffn),
        "mlp.up_proj": (hidden, ffn),
        "mlp.down_proj": (ffn, hidden),
    }
    weights = {}
    for layer in range(layers):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            weights[key + ".lora_A.weight"] = (rng.standard_normal((r, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
            weights[key + ".lora_B.weight"] = (rng.standard_normal((fan_out, r)) * 0.02).astype(np.float32)
    os.makedirs(path, exist_ok=True)
    save_file(weights, os.path.join(path, "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "fan_in_fan_out": False,
        "target_modules": [n.split(".")[1] for n in shapes],
        "base_model_name_or_path": None,
    }
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def main():
    proto, sp = load()
    write_gguf(os.path.join(OUT, "tiny.gguf"), proto, sp)
    write_adapter(os.path.join(OUT, "adapters", "all_r8"))

    # Mistral-7B-v0.1's tokenizer config: legacy SentencePiece behaviour, BOS added, no EOS.
    tok = LlamaTokenizer(MODEL, legacy=True, add_bos_token=True, add_eos_token=False)
    tok.chat_template = CHAT_TEMPLATE
    cases = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        # Decoded by sentencepiece itself, special tokens left out (transformers' slow decode strips a second
        # leading space, which its fast tokenizer and llama.cpp do not).
        plain = [i for i in ids if not (sp.is_control(i) or sp.is_unknown(i))]
        cases.append({"text": text, "ids": ids, "decoded": sp.decode(plain)})
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    chat_ids = tok.apply_chat_template(CONVERSATION, tokenize=True)
    reference = {
        "made_by": f"transformers {transformers.__version__} LlamaTokenizer (slow, legacy) on sentencepiece "
        f"{spm.__version__}",
        "tokenizer_model": "mistral-common tokenizer.model.v1 (Mistral-7B-v0.1)",
        "cases": cases,
        "chat": {"messages": CONVERSATION, "text": rendered, "ids": chat_ids},
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
