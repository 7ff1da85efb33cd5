"""Makes the 7B benchmark's models in DIR (argv[1]): a GGUF with Mistral-7B-v0.1's shape (llama architecture, 32
layers, hidden 4096, FFN 14336, 32 heads and 8 KV heads of 128, vocabulary 32000) and random weights, carrying
Mistral-7B-v0.1's own SentencePiece tokenizer, in the two forms CPU users run: Q4_K_M and Q8_0, quantized by
llama.cpp itself (llama-cpp-python's `llama_model_quantize`, the code of llama.cpp's `llama-quantize`) from an f16
file written here tensor by tensor and deleted afterwards (14.5 GB; the two results are 4.4 and 7.7 GB).
"""

import ctypes
import os
import sys
import time

import gguf
import llama_cpp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spm-fixture"))
from mistral_spm import add_tokenizer, load  # noqa: E402

DIR = sys.argv[1]
VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 32000, 4096, 14336, 32, 32, 8
HEAD_DIM = HIDDEN // HEADS
QUANTS = {"Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}


def tensors():
    """(name, shape, scale) of every tensor, in llama.cpp's order; scale 0 is a norm's ones."""
    yield "token_embd.weight", (VOCAB, HIDDEN), 0.02
    for layer in range(LAYERS):
        b = f"blk.{layer}."
        yield b + "attn_norm.weight", (HIDDEN,), 0
        yield b + "attn_q.weight", (HEADS * HEAD_DIM, HIDDEN), 0.02
        yield b + "attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN), 0.02
        yield b + "attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN), 0.02
        yield b + "attn_output.weight", (HIDDEN, HEADS * HEAD_DIM), 0.02
        yield b + "ffn_norm.weight", (HIDDEN,), 0
        yield b + "ffn_gate.weight", (FFN, HIDDEN), 0.02
        yield b + "ffn_up.weight", (FFN, HIDDEN), 0.02
        yield b + "ffn_down.weight", (HIDDEN, FFN), 0.02
    yield "output_norm.weight", (HIDDEN,), 0
    yield "output.weight", (VOCAB, HIDDEN), 0.02


def write_f16(path):
    proto, sp = load()
    assert sp.get_piece_size() == VOCAB
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("mistral-7b-shaped-random")
    w.add_context_length(32768)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_tokenizer(w, proto, sp)
    plan = list(tensors())
    for name, shape, scale in plan:
        # Norms stay f32, as llama.cpp's converter keeps 1-D tensors.
        dtype = np.float32 if scale == 0 else np.float16
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(7)
    for name, shape, scale in plan:
        if scale == 0:
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            w.write_tensor_data((rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16))
    w.close()


def quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize {dst} failed ({rc})")


def main():
    os.makedirs(DIR, exist_ok=True)
    wanted = {q: os.path.join(DIR, f"mistral-7b-random.{q}.gguf") for q in QUANTS}
    if all(os.path.exists(p) for p in wanted.values()):
        return
    f16 = os.path.join(DIR, "mistral-7b-random.F16.gguf")
    start = time.time()
    write_f16(f16 + ".tmp")
    os.replace(f16 + ".tmp", f16)
    print(f"wrote {f16} in {time.time() - start:.0f} s", flush=True)
    for q, path in wanted.items():
        if os.path.exists(path):
            continue
        start = time.time()
        quantize(f16, path + ".tmp", QUANTS[q])
        os.replace(path + ".tmp", path)
        print(f"quantized {path} in {time.time() - start:.0f} s", flush=True)
    os.remove(f16)


if __name__ == "__main__":
    main()
