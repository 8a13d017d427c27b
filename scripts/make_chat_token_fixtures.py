"""Writes tests/fixtures/chat-tokenizers/: three small tokenizers shaped like real
checkpoints' (nothing comes from a hub), and expected.json: the token ids (and, for
templates with {% generation %} blocks, the assistant mask) that transformers'
apply_chat_template gives (each family's *_training variants, which TRL ships with
{% generation %} blocks, give the masks that rlvr's rendered masks are checked against) for real chat templates over the conversations of
make_chat_fixtures.py. tests/chat_template.rs tokenizes the same with rlvr.

- qwen:   byte-level BPE with Qwen2's pre-tokenizer regex; <|im_start|>, <|im_end|>,
          <|endoftext|> special; <think>, </think>, <tool_call>, </tool_call> added, not special.
- r1:     the same with DeepSeek-R1-Distill's special tokens; its post-processor adds
          <｜begin▁of▁sentence｜>, which the template writes too.
- llama3: byte-level BPE whose post-processor adds <|begin_of_text|> (as Llama 3's does),
          under templates that write {{ bos_token }} themselves: one BOS, not two.
- spm:    a SentencePiece-style BPE (Metaspace, byte fallback) whose post-processor adds <s>,
          as Gemma's and Phi-3's do.

    PY=$(scripts/python-env.sh) && "$PY" scripts/make_chat_token_fixtures.py "$(scripts/chat-templates.sh)"

Deterministic for the same tokenizers/transformers versions.
"""
import json
import pathlib
import shutil
import sys

import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
TEMPLATES = pathlib.Path(sys.argv[1])

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/chat-tokenizers"
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def conversations():
    # The same conversations as the render fixtures, without the one that raises.
    import make_chat_fixtures as render
    return {k: v for k, v in render.CONVERSATIONS.items() if k != "error_roles"}


def corpus(convs):
    texts = []
    for conv in convs.values():
        for m in conv["messages"]:
            texts.append(m["content"] or "")
    texts += ["You are a helpful assistant.", "Cutting Knowledge Date: December 2023",
              "Today Date: 26 Jul 2024", "Environment: ipython", "get_weather Paris city"]
    return texts * 20


def byte_level(specials, added, post_bos=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tok, trainer


def spm():
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>",
                "<|system|>", "<|end|>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    return tok, trainer


FAMILIES = {
    "qwen": dict(
        build=lambda: byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], []),
        added=["<think>", "</think>", "<tool_call>", "</tool_call>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", post_bos=None,
        templates=["qwen2_5", "qwen2_5_training", "qwen3", "qwen3_training", "qwen3_instruct_2507",
                   "qwen3_instruct_2507_training"]),
    # DeepSeek-R1-Distill-Qwen: Qwen's vocabulary with DeepSeek's special tokens; its
    # post-processor adds the BOS that the template also writes.
    "r1": dict(
        build=lambda: byte_level(["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                  "<｜User｜>", "<｜Assistant｜>", "<|im_start|>", "<|im_end|>"], []),
        added=["<think>", "</think>"],
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", pad=None,
        post_bos="<｜begin▁of▁sentence｜>",
        templates=["deepseek_r1_distill", "deepseek_r1_distill_training"]),
    "llama3": dict(
        build=lambda: byte_level(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                  "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"], []),
        added=[], bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, post_bos="<|begin_of_text|>",
        templates=["llama3_1", "llama3_2", "llama3_training"]),
    "spm": dict(
        build=spm, added=[], bos="<s>", eos="</s>", pad=None, post_bos="<s>",
        templates=["gemma3", "gemma3_training", "phi3_5", "phi3_5_training"]),
}


def make(family, spec, texts):
    tok, trainer = spec["build"]()
    tok.train_from_iterator(texts, trainer)
    if spec["added"]:
        from tokenizers import AddedToken
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["added"]])
    if spec["post_bos"]:
        bos = spec["post_bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"],
                                   pad_token=spec["pad"])
    d = OUT / family
    if d.exists():
        shutil.rmtree(d)
    fast.save_pretrained(d)
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        (d / extra).unlink(missing_ok=True)
    return d


def main():
    transformers.utils.logging.disable_progress_bar()
    convs = conversations()
    texts = corpus(convs)
    cases = []
    for family, spec in FAMILIES.items():
        d = make(family, spec, texts)
        for name in spec["templates"]:
            source = (TEMPLATES / f"{name}.jinja").read_text()
            tok = AutoTokenizer.from_pretrained(d)
            generation = "{% generation %}" in source or "{%- generation %}" in source
            for label, conv in convs.items():
                kwargs = dict(date_string="26 Jul 2024", **conv.get("template_kwargs", {}))
                case = {"tokenizer": family, "template": name, "label": label, "conversation": conv}
                # transformers refuses the mask with continue_final_message
                masked = generation and not conv.get("continue_final_message", False)
                try:
                    out = tok.apply_chat_template(
                        conv["messages"], tools=conv.get("tools"), chat_template=source, tokenize=True,
                        return_dict=True, add_generation_prompt=conv.get("add_generation_prompt", False),
                        continue_final_message=conv.get("continue_final_message", False),
                        return_assistant_tokens_mask=masked, **kwargs)
                except Exception as e:  # noqa: BLE001  the template raised; rlvr must too
                    case["error"] = str(e)
                    cases.append(case)
                    continue
                case["input_ids"] = list(out["input_ids"])
                if masked:
                    case["assistant_mask"] = list(out["assistant_masks"])
                bos = tok.bos_token_id
                case["bos_count"] = sum(1 for i in case["input_ids"] if bos is not None and i == bos)
                cases.append(case)
    doc = {"transformers": transformers.__version__, "cases": cases}
    (OUT / "expected.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n")
    sizes = ", ".join(f"{p.relative_to(OUT)} {p.stat().st_size} B" for p in sorted(OUT.rglob("*")) if p.is_file())
    print(f"{len(cases)} cases, {sum('error' in c for c in cases)} errors; {sizes}")


if __name__ == "__main__":
    main()
