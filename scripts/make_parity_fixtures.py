#!/usr/bin/env python3
"""Writes the logits-parity fixtures for rlvr's own Llama / Qwen2 / Qwen3 implementation.

For each architecture it builds a tiny randomly initialised HF transformers model (nothing
comes from the hub), saves it with save_pretrained (config.json, model.safetensors,
generation_config.json) under tests/fixtures/tiny-<arch>/, and writes expected_logits.json
there: fp32 logits from the eager-attention reference for fixed inputs, plus a greedy
generation.

    PY=$(scripts/python-env.sh) && "$PY" scripts/make_parity_fixtures.py

Deterministic: rerunning rewrites byte-identical files (same torch/transformers versions).
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

SEED = 1234
INIT_STD = 0.2          # every matrix, embedding and bias ~ N(0, 0.2^2)
NORM_STD = 0.1          # every RMSNorm weight ~ 1 + N(0, 0.1^2)

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,   # GQA: 2 query heads share each kv head; head_dim 8
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
ARCHS = {
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(
        **COMMON, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False)),
    "llama": (LlamaForCausalLM, LlamaConfig(
        **COMMON, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Qwen3: per-head q/k norms, no q/k/v bias, and a head_dim (16) that is not
    # hidden_size / heads (8), as in the released Qwen3 models. Tied like Qwen3-0.6B..4B,
    # untied like Qwen3-8B and up.
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(
        **COMMON, head_dim=16, tie_word_embeddings=True, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False)),
    "qwen3-untied": (Qwen3ForCausalLM, Qwen3Config(
        **COMMON, head_dim=16, tie_word_embeddings=False, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False)),
}

SINGLE_IDS = [[5, 17, 33, 2, 90, 41, 7, 64]]
PADDED_IDS = [[0, 0, 0, 12, 45, 7, 88, 3], [9, 14, 21, 60, 2, 33, 71, 19]]
PADDED_MASK = [[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]]
GREEDY_PROMPT = [[5, 17, 33]]
GREEDY_NEW = 10


def logits_list(t):
    import numpy as np
    a = t.detach().to(torch.float32).numpy()
    assert np.isfinite(a).all()
    # str(np.float32) is the shortest repr that round-trips the float32
    return [[[float(str(v)) for v in row] for row in seq] for seq in a]


def dumps(obj, indent=""):
    """JSON with one line per list of scalars (one vocab row of logits = one line)."""
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj)


def position_ids_for(mask):
    # What transformers' generate() does (_prepare_position_ids_for_generation):
    # cumsum(mask) - 1, then masked_fill(mask == 0, 0).
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def init_weights(model):
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_STD * torch.randn(p.shape, generator=g))
            else:
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g))


def build(arch):
    cls, config = ARCHS[arch]
    torch.manual_seed(SEED)
    model = cls(config).to(torch.float32)
    init_weights(model)
    model.eval()
    return model


def run_case(model, ids, mask, pos, attn):
    model.config._attn_implementation = attn
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos,
                     use_cache=False).logits


def main():
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for arch in ARCHS:
        model = build(arch)
        d = os.path.join(OUT, f"tiny-{arch}")
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        model.save_pretrained(d, safe_serialization=True)

        # the saved files must load back to the same model
        reloaded = type(model).from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        for (n1, p1), (n2, p2) in zip(model.state_dict().items(), reloaded.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2), (arch, n1)
        model = reloaded

        cases = {}
        for case, ids, mask in (
            ("single", SINGLE_IDS, [[1] * len(SINGLE_IDS[0])]),
            ("left_padded", PADDED_IDS, PADDED_MASK),
        ):
            ids_t = torch.tensor(ids)
            mask_t = torch.tensor(mask)
            pos_t = position_ids_for(mask_t)
            logits = run_case(model, ids_t, mask_t, pos_t, "eager")
            # cross-check against the sdpa kernel on the positions that count
            other = run_case(model, ids_t, mask_t, pos_t, "sdpa")
            real = mask_t.bool()
            diff = (logits[real] - other[real]).abs().max().item()
            assert diff < 1e-4, (arch, case, diff)
            cases[case] = {
                "input_ids": ids,
                "attention_mask": mask,
                "position_ids": pos_t.tolist(),
                "compare_mask": mask,
                "logits": logits_list(logits),
            }
        # the same inputs with the model in bfloat16 (eager attention): log-probs, which is
        # what training reads
        bf16 = type(model).from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager").eval()
        for case in ("single", "left_padded"):
            c = cases[case]
            with torch.no_grad():
                logits = bf16(input_ids=torch.tensor(c["input_ids"]),
                              attention_mask=torch.tensor(c["attention_mask"]),
                              position_ids=torch.tensor(c["position_ids"]), use_cache=False).logits
            c["bf16_logprobs"] = logits_list(torch.log_softmax(logits.float(), -1))
        del bf16

        # left padding must not change the unpadded tokens' logits: row 0 of the padded
        # batch against the same 5 tokens alone
        alone = run_case(model, torch.tensor([PADDED_IDS[0][3:]]), torch.ones(1, 5, dtype=torch.long),
                         torch.arange(5)[None], "eager")
        lp = torch.tensor(cases["left_padded"]["logits"])[0, 3:]
        assert (alone[0] - lp).abs().max().item() < 1e-4, arch
        model.config._attn_implementation = "eager"

        # greedy decoding, with the KV cache, not stopping at eos
        prompt = torch.tensor(GREEDY_PROMPT)
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW,
                                   eos_token_id=None, pad_token_id=COMMON["pad_token_id"],
                                   bos_token_id=COMMON["bos_token_id"])
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                 generation_config=gen_cfg)
        out_ids = out[0].tolist()
        assert len(out_ids) == len(GREEDY_PROMPT[0]) + GREEDY_NEW, out_ids
        # and the same by argmax over full forwards without a cache
        ids, margin, logprobs = list(GREEDY_PROMPT[0]), float("inf"), []
        for _ in range(GREEDY_NEW):
            with torch.no_grad():
                last = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            top2 = last.topk(2).values
            margin = min(margin, (top2[0] - top2[1]).item())
            ids.append(int(last.argmax()))
            logprobs.append(float(str(torch.log_softmax(last, -1)[ids[-1]].numpy())))
        assert ids == out_ids, (arch, ids, out_ids)
        new = out_ids[len(GREEDY_PROMPT[0]):]
        cases["greedy"] = {
            "input_ids": GREEDY_PROMPT,
            "max_new_tokens": GREEDY_NEW,
            "do_sample": False,
            "output_ids": [out_ids],
            "new_ids": [new],
            "new_logprobs": [logprobs],
            "eos_handling": (
                "generate() called with eos_token_id=None and min_new_tokens=max_new_tokens=10, "
                "so exactly 10 tokens are generated with no eos stop (config.json still says "
                f"eos_token_id={COMMON['eos_token_id']}); pad_token_id={COMMON['pad_token_id']}"),
            "new_ids_contain_config_eos": COMMON["eos_token_id"] in new,
            "checked_against": "argmax over full no-cache forwards: identical",
            # smallest top-1 minus top-2 logit over the 10 steps: how far from a tie greedy is
            "min_top2_margin": float(str(torch.tensor(margin).numpy())),
        }

        doc = {
            "generated_by": "scripts/make_parity_fixtures.py",
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "architecture": type(model).__name__,
            "dtype": "float32 (bf16_logprobs: the model loaded in bfloat16)",
            "attn_implementation": "eager (sdpa agrees to < 1e-4 on compared positions)",
            "init": (f"torch.Generator seed {SEED}: every non-norm parameter (embeddings, linear "
                     f"weights, q/k/v biases) ~ N(0, {INIT_STD}^2); every RMSNorm weight ~ "
                     f"1 + N(0, {NORM_STD}^2)"),
            "position_ids_rule": ("cumsum(attention_mask) - 1, then masked_fill(attention_mask == 0, 0) "
                                  "(as transformers' generate); passed explicitly"),
            "logits_layout": "[batch][seq][vocab]; floats are the shortest decimal that round-trips float32",
            "compare": ("compare logits only where compare_mask == 1; padded positions' logits are "
                        "meaningless (eager attention over an all-masked row)"),
            "cases": cases,
        }
        with open(os.path.join(d, "expected_logits.json"), "w") as fh:
            fh.write(dumps(doc) + "\n")
        print(f"{arch}: {d} " + ", ".join(
            f"{f} {os.path.getsize(os.path.join(d, f))} B" for f in sorted(os.listdir(d))))
        print(f"  greedy {out_ids}")


if __name__ == "__main__":
    main()
