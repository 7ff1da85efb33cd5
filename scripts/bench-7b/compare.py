"""The 7B CPU benchmark: ours against llama.cpp on the same Mistral-7B-shaped GGUFs (Q4_K_M and Q8_0), same threads,
in one run, and ours with 8 streams on 8 different adapters against 8 on the base model.

Usage: compare.py DIR ROUNDS OUT.md  (DIR holds make_gguf.py's files; run by scripts/bench-7b/run.sh)

Each round runs ours and llama.cpp once per file, each in a process of its own (so each one's peak memory is its
own), in alternating order; every ratio is taken within its round, as this shared machine's speed drifts by
±15-30% over minutes.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

DIR, ROUNDS, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3]
PREFILL, PROMPT, STEPS = 128, 16, 32
THREADS = os.cpu_count() or 1
HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable
LORALAND = os.environ.get("LORALAND_BIN", "target/release/loraland")
GIB = float(1 << 30)


def ours(model, out):
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    cmd = [LORALAND, "bench", "decode", "--model", model, "--quant", "keep", "--batch-sizes", "1,8",
           "--prefill-len", str(PREFILL), "--prompt-len", str(PROMPT), "--steps", str(STEPS), "--json", out]
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    with open(out) as f:
        r = json.load(f)
    rows = {row["batch"]: row for row in r["rows"]}
    return {
        "prefill": r["prefill_tok_s"],
        "decode": rows[1]["base"],
        "b8_base": rows[8]["base"],
        "b8_one": rows[8]["one_adapter"],
        "b8_different": rows[8]["all_different"],
        "rss": r["peak_rss_bytes"],
        "load_s": r["load_s"],
    }


def theirs(model, out):
    cmd = [PYTHON, os.path.join(HERE, "llama_cpp_rate.py"), model, out, str(PREFILL), str(PROMPT), str(STEPS),
           str(THREADS)]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    with open(out) as f:
        r = json.load(f)
    return {"prefill": r["prefill_tok_s"], "decode": r["decode_tok_s"], "rss": r["peak_rss_bytes"],
            "load_s": r["load_s"], "engine": r["engine"]}


def main():
    files = {q: os.path.join(DIR, f"mistral-7b-random.{q}.gguf") for q in ("Q4_K_M", "Q8_0")}
    results = {q: [] for q in files}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(ROUNDS):
            for q, model in files.items():
                order = [("ours", ours), ("llama.cpp", theirs)]
                if rnd % 2:
                    order.reverse()
                got = {}
                for name, fn in order:
                    print(f"==> round {rnd + 1}/{ROUNDS}, {q}, {name}", file=sys.stderr, flush=True)
                    got[name] = fn(model, os.path.join(tmp, f"{name}.json"))
                results[q].append(got)

    engine = results["Q8_0"][0]["llama.cpp"]["engine"]
    lines = [
        f"7B CPU benchmark: Mistral-7B-shaped GGUFs with random weights, {THREADS} threads each, {ROUNDS} rounds "
        f"(ours and {engine} alternated within each round).",
        f"Batch-1 prefill of {PREFILL} tokens; decode tok/s over {STEPS} steps after a {PROMPT}-token prompt; "
        "ratios within each round, median (range).",
        "",
        "| file | figure | ours | llama.cpp | ours / llama.cpp |",
        "|---|---|---:|---:|---:|",
    ]

    def ratio_cell(pairs):
        ratios = [a / b for a, b in pairs]
        return f"**{statistics.median(ratios):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f})"

    def mean(xs):
        return statistics.fmean(xs)

    for q, runs in results.items():
        for key, label in (("prefill", f"prefill tok/s ({PREFILL} tokens)"), ("decode", "decode tok/s, batch 1")):
            o = [r["ours"][key] for r in runs]
            t = [r["llama.cpp"][key] for r in runs]
            lines.append(f"| {q} | {label} | {mean(o):.2f} | {mean(t):.2f} | {ratio_cell(zip(o, t))} |")
        o = [r["ours"]["rss"] / GIB for r in runs]
        t = [r["llama.cpp"]["rss"] / GIB for r in runs]
        lines.append(f"| {q} | peak resident memory, GiB | {max(o):.2f} | {max(t):.2f} | |")
    lines += [
        "",
        "Ours, 8 streams: every row on the base model (a), on one adapter (b), each on a different random r=8 q/v "
        "adapter (c).",
        "",
        "| file | (a) base tok/s | (b) one adapter | (c) 8 different | (c)/(a) | 8 streams (a) / 1 stream |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for q, runs in results.items():
        a = [r["ours"]["b8_base"] for r in runs]
        b = [r["ours"]["b8_one"] for r in runs]
        c = [r["ours"]["b8_different"] for r in runs]
        one = [r["ours"]["decode"] for r in runs]
        lines.append(
            f"| {q} | {mean(a):.2f} | {mean(b):.2f} | {mean(c):.2f} | {ratio_cell(zip(c, a))} | "
            f"{ratio_cell(zip(a, one))} |"
        )
    text = "\n".join(lines) + "\n"
    with open(OUT, "w") as f:
        f.write(text)
    with open(os.path.splitext(OUT)[0] + ".json", "w") as f:
        json.dump(results, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
