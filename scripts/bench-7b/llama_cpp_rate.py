"""llama.cpp's side of the 7B benchmark: batch-1 prefill and decode tokens/s on a GGUF, measured as
`loraland bench decode --prefill-len P --prompt-len N --steps S` measures ours, written as JSON to argv[2].

Usage: llama_cpp_rate.py MODEL.gguf OUT.json PREFILL_LEN PROMPT_LEN STEPS THREADS

The same token ids as ours (`lab::bench::decode::prompt`); the prefill timed after one untimed prefill of the same
prompt; decode timed over STEPS greedy steps after one untimed step, each step's argmax read from the logits as
ours does. llama.cpp runs with its defaults for this CPU (the build's native kernels, weights repacked where it
does that, memory-mapped file), one sequence, `THREADS` threads for prefill and decode.
"""

import json
import resource
import sys
import time

import llama_cpp
import numpy as np

path, out = sys.argv[1], sys.argv[2]
prefill_len, prompt_len, steps, threads = (int(a) for a in sys.argv[3:7])


def prompt(vocab, row, length):
    return [((row * 31 + j * 7) + 100) % vocab for j in range(length)]


start = time.perf_counter()
llm = llama_cpp.Llama(
    model_path=path,
    n_ctx=max(prefill_len, prompt_len + steps + 2) + 16,
    n_batch=max(prefill_len, prompt_len, 1),
    n_ubatch=max(prefill_len, prompt_len, 1),
    n_threads=threads,
    n_threads_batch=threads,
    verbose=False,
)
load_s = time.perf_counter() - start
vocab = llm.n_vocab()


def last_argmax():
    return int(np.argmax(llm.scores[llm.n_tokens - 1]))


prefill = None
if prefill_len:
    tokens = prompt(vocab, 0, prefill_len)
    for _ in range(2):
        llm.reset()  # the next eval drops the cached positions from n_tokens = 0 on
        begin = time.perf_counter()
        llm.eval(tokens)
        last_argmax()
        prefill = prefill_len / (time.perf_counter() - begin)

llm.reset()
llm.eval(prompt(vocab, 0, prompt_len))
llm.eval([last_argmax()])  # warm-up decode
begin = time.perf_counter()
for _ in range(steps):
    llm.eval([last_argmax()])
decode = steps / (time.perf_counter() - begin)

report = {
    "engine": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
    "model": path,
    "threads": threads,
    "load_s": load_s,
    "prefill_tokens": prefill_len,
    "prefill_tok_s": prefill,
    "decode_tok_s": decode,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}
with open(out, "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps(report))
