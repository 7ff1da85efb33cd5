#!/usr/bin/env python3
"""PEFT's `add_weighted_adapter` on the tiny-llama fixture: the references of the engine's adapter merging
(`engine/tests/merge.rs`), written to engine/tests/fixtures/merge/.

Run once with torch, transformers and peft installed (not part of `make test`; the files it writes are committed):

    python3 scripts/merge-fixture/make.py ../shared/fixtures engine/tests/fixtures/merge

It adds two random rank-8 adapters to the shared `qv_r8` (PEFT `init_lora_weights=False`, B drawn again, as the
shared fixtures do) and saves them in PEFT's format, then merges adapters with each LoRAX strategy (linear, ties,
dare_linear, dare_ties; PEFT's combination types of the same names) and saves, per case: the merged `lora_A` /
`lora_B` of every targeted module, the logits of the merged adapter on one reference prompt, and for the DARE
cases the masks that PEFT's random pruning drew (so that the engine can be checked exactly with PEFT's draws).
"""

import json
import os
import sys

import torch
import peft
import peft.utils.merge_utils as merge_utils
import transformers
from peft import LoraConfig, PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

NEW_ADAPTERS = {
    # name: (alpha, targets); rank 8 like the shared qv_r8 (PEFT merges only adapters of one rank)
    "qkv_r8": (8, ["q_proj", "k_proj", "v_proj"]),
    "ov_r8": (32, ["o_proj", "v_proj"]),
}

CASES = [
    dict(name="linear", adapters=["qv_r8", "qkv_r8"], weights=[0.7, 0.5], combination_type="linear"),
    dict(name="linear_three", adapters=["qv_r8", "qkv_r8", "ov_r8"], weights=[1.0, 0.5, 0.25],
         combination_type="linear"),
    dict(name="single", adapters=["qkv_r8"], weights=[0.5], combination_type="linear"),
    # PEFT merges one adapter linearly whatever the strategy.
    dict(name="single_ties", adapters=["ov_r8"], weights=[0.8], combination_type="ties", density=0.5),
    # Task negation: a negative weight subtracts an adapter.
    dict(name="negative", adapters=["qv_r8", "qkv_r8"], weights=[1.0, -0.6], combination_type="linear"),
    dict(name="ties_total", adapters=["qv_r8", "qkv_r8", "ov_r8"], weights=[1.0, 0.6, 0.8],
         combination_type="ties", density=0.5, majority_sign_method="total"),
    dict(name="ties_frequency", adapters=["qv_r8", "qkv_r8", "ov_r8"], weights=[0.9, 0.4, 1.2],
         combination_type="ties", density=0.3, majority_sign_method="frequency"),
    dict(name="dare_linear", adapters=["qv_r8", "qkv_r8"], weights=[1.0, 0.8],
         combination_type="dare_linear", density=0.6),
    dict(name="dare_ties", adapters=["qv_r8", "qkv_r8", "ov_r8"], weights=[0.7, 1.0, 0.5],
         combination_type="dare_ties", density=0.5, majority_sign_method="total"),
]


def lora_layers(model):
    """(PEFT tensor name stem, layer) for every LoRA layer: `base_model.model.model.layers.N.self_attn.q_proj`."""
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            yield name, module


def main():
    shared, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(4321)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(shared, "tiny-llama/base"), dtype=torch.float32,
                                                attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, os.path.join(shared, "tiny-llama/adapters/qv_r8"), adapter_name="qv_r8")
    for name, (alpha, targets) in NEW_ADAPTERS.items():
        model.add_adapter(name, LoraConfig(r=8, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                                           lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(f"lora_B.{a}." in n for a in NEW_ADAPTERS):
                p.normal_(0.0, 0.05)
    model.eval()
    os.makedirs(out, exist_ok=True)
    for name in NEW_ADAPTERS:
        model.save_pretrained(os.path.join(out, "adapters"), selected_adapters=[name])
    os.remove(os.path.join(out, "adapters", "README.md"))  # the model card PEFT writes

    # The masks PEFT's random pruning draws, by the pruned tensor's storage (a LoRA factor's own).
    drawn = {}
    prune = merge_utils.prune

    def recording_prune(tensor, density, method, rescale=False):
        pruned = prune(tensor, density, method, rescale=rescale)
        if method == "random":
            drawn[tensor.data_ptr()] = (pruned != 0).to(torch.uint8)
        return pruned

    merge_utils.prune = recording_prune

    from safetensors.torch import load_file
    ids = load_file(os.path.join(shared, "tiny-llama/reference.safetensors"))["input_ids"][1:2]
    tensors = {"input_ids": ids}
    for case in CASES:
        drawn.clear()
        kwargs = {k: case[k] for k in ("density", "majority_sign_method") if k in case}
        model.add_weighted_adapter(case["adapters"], case["weights"], case["name"],
                                   combination_type=case["combination_type"], **kwargs)
        for stem, layer in lora_layers(model):
            if case["name"] not in layer.lora_A:
                continue
            for which, factors in (("A", layer.lora_A), ("B", layer.lora_B)):
                tensors[f"{case['name']}/{stem}.lora_{which}.weight"] = factors[case["name"]].weight.detach().clone()
                for adapter in case["adapters"]:
                    if adapter in factors:
                        mask = drawn.get(factors[adapter].weight.data_ptr())
                        if mask is not None:
                            tensors[f"{case['name']}/mask/{adapter}/{stem}.lora_{which}.weight"] = mask
        if case["combination_type"].startswith("dare") and not any("/mask/" in k for k in tensors):
            raise SystemExit(f"{case['name']}: no random pruning was recorded")
        model.set_adapter(case["name"])
        with torch.no_grad():
            tensors[f"{case['name']}/logits"] = model(input_ids=ids).logits.float()[0].contiguous()
        case["r"] = model.peft_config[case["name"]].r
        case["lora_alpha"] = model.peft_config[case["name"]].lora_alpha
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({
            "cases": CASES,
            "produced_by": f"transformers {transformers.__version__}, peft {peft.__version__}, "
                           f"torch {torch.__version__}, float32, eager attention",
            "seed": 4321,
        }, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
