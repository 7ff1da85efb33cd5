"""The OpenAI SDK and lorax-client, unchanged, against a running `loraland serve` (tiny fixture model with the
fixture adapters). Run by scripts/clients.sh, which starts the server and passes its URL as the first argument.
Greedy decoding everywhere, so that the same prompt gives the same text through every route."""

import json
import sys

import lorax
import lorax.errors
import openai

BASE = sys.argv[1]
PROMPT = "The adapters of LoRA Land"
checks = []


def check(name, cond, detail=""):
    checks.append((name, bool(cond)))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {detail}"))


oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key="not-needed", max_retries=0)

# --- OpenAI: models list ---
models = oa.models.list()
ids = [m.id for m in models.data]
check("models list has the base and the adapters", "qv_r8" in ids and "all_r4" in ids and len(ids) >= 5, ids)
base_name = ids[0]
parents = {m.id: getattr(m, "parent", None) for m in models.data}
check("adapters have the base as parent", parents["qv_r8"] == base_name, parents)

# --- OpenAI: chat, non-streaming and streaming give the same text ---
messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a task."}]
chat = oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=8, temperature=0)
choice = chat.choices[0]
check("chat completion object", chat.object == "chat.completion" and choice.message.role == "assistant", chat)
check("chat usage", chat.usage.completion_tokens == 8 and chat.usage.total_tokens == chat.usage.prompt_tokens + 8, chat.usage)
check("chat finish reason", choice.finish_reason == "length", choice.finish_reason)
stream = oa.chat.completions.create(
    model="qv_r8", messages=messages, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
)
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check("chat stream equals non-stream", "".join(pieces) == choice.message.content, (pieces, choice.message.content))
check("chat stream finish and usage", finish == "length" and usage is not None and usage.completion_tokens == 8, (finish, usage))

# --- OpenAI: completions ---
comp = oa.completions.create(model="qv_r8", prompt=PROMPT, max_tokens=8, temperature=0)
check("completion object", comp.object == "text_completion" and comp.usage.completion_tokens == 8, comp)
text_stream = "".join(c.choices[0].text for c in oa.completions.create(
    model="qv_r8", prompt=PROMPT, max_tokens=8, temperature=0, stream=True) if c.choices)
check("completion stream equals non-stream", text_stream == comp.choices[0].text, (text_stream, comp.choices[0].text))

# --- OpenAI: logit_bias and penalties ---
lorax_tokens = lorax.Client(BASE).generate(PROMPT, adapter_id="qv_r8", max_new_tokens=8, details=True).details.tokens
lorax_ids = [t.id for t in lorax_tokens]
forced = oa.completions.create(model="qv_r8", prompt=PROMPT, max_tokens=3, temperature=0,
                               logit_bias={str(lorax_ids[2]): 100})
check("logit_bias +100 forces its token", forced.choices[0].text == lorax_tokens[2].text * 3,
      (forced.choices[0].text, lorax_tokens[2].text))
banned = oa.completions.create(model="qv_r8", prompt=PROMPT, max_tokens=8, temperature=0,
                               logit_bias={str(lorax_ids[0]): -100})
check("logit_bias -100 bans its token", banned.choices[0].text != comp.choices[0].text, banned.choices[0].text)
penalized = oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=8, temperature=0,
                                       presence_penalty=0.5, frequency_penalty=0.5)
check("presence and frequency penalties accepted", penalized.usage.completion_tokens >= 1, penalized)
try:
    oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=4, frequency_penalty=5)
    check("frequency_penalty out of range raises BadRequestError", False, "no exception")
except openai.BadRequestError as e:
    check("frequency_penalty out of range raises BadRequestError", e.body.get("param") == "frequency_penalty", e.body)

# --- OpenAI: errors ---
try:
    oa.chat.completions.create(model="no-such-adapter", messages=messages, max_tokens=4)
    check("unknown model raises NotFoundError", False, "no exception")
except openai.NotFoundError as e:
    check("unknown model raises NotFoundError", "no-such-adapter" in str(e), e)
two = oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=6, n=2, seed=11)
one = oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=6, seed=12)
check("n=2 gives two choices, the second the seed after", [c.index for c in two.choices] == [0, 1]
      and two.choices[1].message.content == one.choices[0].message.content, (two.choices, one.choices))
try:
    oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=4, n=99)
    check("n=99 raises BadRequestError", False, "no exception")
except openai.BadRequestError as e:
    check("n=99 raises BadRequestError", e.body.get("param") == "n", e.body)

# --- lorax-client ---
lc = lorax.Client(BASE)
resp = lc.generate(PROMPT, adapter_id="qv_r8", max_new_tokens=8, details=True)
check("lorax generate details", resp.details.generated_tokens == 8 and resp.details.finish_reason.value == "length", resp.details)
check("lorax generate tokens", len(resp.details.tokens) == 8 and all(t.logprob <= 0 for t in resp.details.tokens), resp.details.tokens)
check("lorax and OpenAI agree", resp.generated_text == comp.choices[0].text, (resp.generated_text, comp.choices[0].text))
base = lc.generate(PROMPT, max_new_tokens=8, details=True)
check("the adapter changes the log-probabilities",
      [t.logprob for t in base.details.tokens] != [t.logprob for t in resp.details.tokens], base.details.tokens)
streamed, last = [], None
for event in lc.generate_stream(PROMPT, adapter_id="qv_r8", max_new_tokens=8):
    streamed.append(event.token.text)
    last = event
check("lorax stream equals generate", "".join(streamed) == resp.generated_text and last.generated_text == resp.generated_text,
      (streamed, last))
try:
    lc.generate(PROMPT, adapter_id="no-such-adapter", max_new_tokens=4)
    check("lorax unknown adapter raises", False, "no exception")
except lorax.errors.NotFoundError as e:
    check("lorax unknown adapter raises", "no-such-adapter" in str(e), e)
try:
    lc.generate(PROMPT, max_new_tokens=100000)
    check("lorax max_new_tokens over the limit raises", False, "no exception")
except lorax.errors.ValidationError as e:
    check("lorax max_new_tokens over the limit raises", "max_new_tokens" in str(e), e)

# --- Structured output and log-probabilities ---
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["answer", "n"],
    "additionalProperties": False,
}


def valid(text):
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return False
    return set(v) == {"answer", "n"} and v["answer"] in ("yes", "no") and isinstance(v["n"], int) and 0 <= v["n"] <= 9


structured = oa.chat.completions.create(
    model="qv_r8", messages=messages, max_tokens=60, seed=3,
    response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}})
check("openai response_format json_schema gives the schema's JSON", valid(structured.choices[0].message.content),
      structured.choices[0].message.content)
as_object = oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=60, seed=4,
                                       response_format={"type": "json_object"})
check("openai response_format json_object finishes", as_object.choices[0].finish_reason in ("stop", "length"), as_object)
constrained = lc.generate(PROMPT, adapter_id="all_r4", max_new_tokens=60, do_sample=True, seed=5,
                          response_format={"type": "json_object", "schema": SCHEMA}, details=True)
check("lorax response_format gives the schema's JSON", valid(constrained.generated_text), constrained.generated_text)
try:
    lc.generate(PROMPT, max_new_tokens=4, response_format={"type": "json_object", "schema": {"type": "no-such-type"}})
    check("lorax uncompilable schema raises", False, "no exception")
except lorax.errors.ValidationError as e:
    check("lorax uncompilable schema raises", "response_format" in str(e), e)
with_logprobs = oa.chat.completions.create(model="qv_r8", messages=messages, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
content = with_logprobs.choices[0].logprobs.content
check("openai chat logprobs: one entry per token, 3 alternatives each",
      len(content) == 6 and all(len(c.top_logprobs) == 3 for c in content), content)
check("openai chat logprobs: the greedy token is the most likely",
      all(c.logprob == max(t.logprob for t in c.top_logprobs) for c in content), content)
text_lp = oa.completions.create(model="qv_r8", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2).choices[0].logprobs
check("openai completion logprobs equal lorax's", text_lp.token_logprobs == [t.logprob for t in lorax_tokens],
      (text_lp.token_logprobs, [t.logprob for t in lorax_tokens]))

scored = lc.generate(PROMPT, max_new_tokens=2, details=True, decoder_input_details=True)
prefill = scored.details.prefill
check("lorax decoder_input_details scores the prompt", len(prefill) > 1 and prefill[0].logprob is None
      and all(t.logprob is not None and t.logprob <= 0 for t in prefill[1:]), prefill)

# merged_adapters: one adapter merged at weight 1 is that adapter (PEFT's add_weighted_adapter), token by token with
# its log-probabilities (the tiny model's greedy text is alike for every adapter); a TIES merge runs; adapters of
# different ranks cannot merge.
from lorax.types import MergedAdapters


def logprobs(**kwargs):
    return [t.logprob for t in lc.generate(PROMPT, max_new_tokens=8, details=True, **kwargs).details.tokens]


def gap(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


plain, base = logprobs(adapter_id="qv_r8"), logprobs()
alone = logprobs(merged_adapters=MergedAdapters(ids=["qv_r8"], weights=[1.0], density=1.0))
check("lorax merge of one adapter at weight 1 equals the adapter", gap(alone, plain) < 1e-4 and gap(alone, base) > 1e-3,
      (alone, plain, base))
ties = lc.generate(PROMPT, max_new_tokens=8, details=True, merged_adapters=MergedAdapters(
    ids=["qv_r8", "qv_r8"], weights=[0.5, 1.0], merge_strategy="ties", density=0.5, majority_sign_method="total"))
check("lorax ties merge generates", ties.details.generated_tokens == 8, ties.details)
try:
    lc.generate(PROMPT, max_new_tokens=2, merged_adapters=MergedAdapters(ids=["qv_r8", "all_r4"], weights=[1, 1],
                                                                         density=1.0))
    check("lorax merge of different ranks raises", False, "no exception")
except lorax.errors.ShardNotReadyError as e:
    check("lorax merge of different ranks raises", "rank 8" in str(e) and "rank 4" in str(e), e)

failed = [name for name, ok in checks if not ok]
print(f"{len(checks) - len(failed)}/{len(checks)} client checks passed")
sys.exit(1 if failed else 0)
