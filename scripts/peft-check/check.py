"""A web-app training job's download, loaded by PEFT: trains an adapter through a running server's Train API
(`POST /train/jobs`), downloads its zip, loads it with `PeftModel.from_pretrained` on the same base model, and checks
that PEFT's greedy tokens and log-probabilities equal the server's for the adapter (`/generate`,
`adapter_id: trained/<job>`).

Usage: check.py <server URL> <base model folder>   (scripts/peft-check.sh starts the server and runs this)
"""
import http.cookiejar
import io
import json
import sys
import tempfile
import time
import urllib.request
import zipfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

url, base = sys.argv[1].rstrip("/"), sys.argv[2]
# A job is its session's: the session cookie the upload gets goes with every later request.
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def request(path, body=None, headers=None):
    req = urllib.request.Request(url + path, data=body, headers=headers or {})
    with opener.open(req, timeout=300) as res:
        return res.status, res.read()


# A small sentiment set as JSONL; the job trains a few steps on q/k/v/o (the attention rows a GGUF would permute).
lines = []
for i in range(20):
    text, label = ("a warm, funny film", "positive") if i % 2 == 0 else ("a dull, tired film", "negative")
    lines.append(json.dumps({"prompt": f"Review {i}: {text}. Sentiment:", "completion": f" {label}"}))
boundary = "peftcheck"
fields = {"name": "peft check", "task": "glue_sst2", "source": "upload", "steps": "8", "rank": "4", "alpha": "8",
          "lr": "0.01", "batch": "4"}
body = "".join(f'--{boundary}\r\ncontent-disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
for t in ["q_proj", "k_proj", "v_proj", "o_proj"]:
    body += f'--{boundary}\r\ncontent-disposition: form-data; name="targets"\r\n\r\n{t}\r\n'
body += (f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="data.jsonl"\r\n\r\n'
         + "\n".join(lines) + f"\r\n--{boundary}--\r\n")
status, reply = request("/train/jobs", body.encode(), {"content-type": f"multipart/form-data; boundary={boundary}"})
assert status == 201, (status, reply)
job = json.loads(reply)["id"]
print(f"job {job} queued")

# The job's events end when it does.
deadline = time.time() + 300
while True:
    _, events = request(f"/train/{job}/events")
    states = [json.loads(line[6:])["job"] for line in events.decode().splitlines() if line.startswith("data: {\"job")]
    if states and states[-1]["status"] not in ("queued", "running"):
        break
    assert time.time() < deadline, "the job did not finish in 5 minutes"
last = states[-1]
assert last["status"] == "done", last
print(f"job done: {len(last['progress']) - 1} steps, held-out score {last['score']}")

_, zipped = request(f"/train/{job}/adapter.zip")
folder = tempfile.mkdtemp()
zipfile.ZipFile(io.BytesIO(zipped)).extractall(folder)
adapter_dir = f"{folder}/loraland-{job}"

model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
peft_model = PeftModel.from_pretrained(model, adapter_dir)
peft_model.eval()

# Every tensor of the file is in the PEFT model, under PEFT's own name, with its values.
saved = load_file(f"{adapter_dir}/adapter_model.safetensors")
params = dict(peft_model.named_parameters())
for name, tensor in saved.items():
    key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
    assert key in params, f"PEFT did not take {name}"
    assert torch.equal(params[key].detach().to(tensor.dtype), tensor), f"{name} differs in PEFT"
trained = sum(1 for k in params if "lora_" in k)
assert trained == len(saved), (trained, len(saved))
print(f"PEFT loaded all {len(saved)} tensors")

# The server's greedy answer with the adapter, token by token, equals PEFT's.
prompt = "Review 3: a dull, tired film. Sentiment:"
gen = {"inputs": prompt, "parameters": {"adapter_id": f"trained/{job}", "max_new_tokens": 8,
                                         "decoder_input_details": True, "details": True}}
_, out = request("/generate", json.dumps(gen).encode(), {"content-type": "application/json"})
details = json.loads(out)["details"]
prefill = [t["id"] for t in details["prefill"]]
tokens = [t["id"] for t in details["tokens"]]
ids = torch.tensor([prefill + tokens])
with torch.no_grad():
    logits = peft_model(ids).logits[0].float()
    with peft_model.disable_adapter():
        base_logits = peft_model(ids).logits[0].float()
# The trained adapter moves the logits (a zero adapter would pass the comparison below trivially).
moved = float((logits - base_logits).abs().max())
assert moved > 1e-3, f"the adapter changes no logit by more than {moved}"
logprobs = torch.log_softmax(logits, dim=-1)
worst = 0.0
for i, tok in enumerate(details["tokens"]):
    row = logprobs[len(prefill) - 1 + i]
    assert int(row.argmax()) == tok["id"], f"token {i}: PEFT's greedy choice is {int(row.argmax())}, ours {tok['id']}"
    worst = max(worst, abs(float(row[tok["id"]]) - tok["logprob"]))
assert worst < 2e-3, f"log-probabilities differ by {worst}"
print(f"PEFT's greedy tokens equal the server's ({len(tokens)} tokens), log-probabilities within {worst:.2e} "
      f"(the adapter moves PEFT's logits by up to {moved:.3f})")
print("peft-check: ok")
