"""TRL's GRPOTrainer on the workload of `rlvr bench rl`, timed per step.

Usage: python bench_trl_grpo.py MODEL_DIR PROMPTS_JSON STEPS WARMUP THREADS [GENERATIONS NEW_TOKENS CHECKPOINTING [DEVICE DTYPE]]
Prints one JSON object: median seconds per step and per generate() call over the
steps after the warm-up. Run by `rlvr bench rl` with the venv of scripts/python-env.sh
(installed with RLVR_WITH_TRL=1).
"""

import json
import re
import statistics
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_dir, prompts_path = sys.argv[1], sys.argv[2]
steps, warmup, threads = (int(a) for a in sys.argv[3:6])
generations, new_tokens, checkpointing = (int(a) for a in (sys.argv[6:9] or [8, 32, 0]))
device, dtype = (sys.argv[9:11] or ["cpu", "float32"])
torch.set_num_threads(threads)

tokenizer = PreTrainedTokenizerFast(
    tokenizer_file=f"{model_dir}/tokenizer.json",
    eos_token="<|end|>",
    pad_token="<|pad|>",
    padding_side="left",
)
# bf16 as TRL users run it on a GPU: weights loaded in bf16, bf16=True.
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
model.generation_config.eos_token_id = tokenizer.eos_token_id
model.generation_config.pad_token_id = tokenizer.pad_token_id

generate_seconds = []
original_generate = model.generate


def timed_generate(*args, **kwargs):
    start = time.perf_counter()
    out = original_generate(*args, **kwargs)
    generate_seconds.append(time.perf_counter() - start)
    return out


model.generate = timed_generate


def has_digit(completions, **_):
    """The same reward as the rlvr side: 1 when the completion holds a digit."""
    return [1.0 if re.search(r"[0-9]", c) else 0.0 for c in completions]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)


def peak_rss_kb():
    """This process's own peak (VmHWM). Not getrusage's ru_maxrss: Linux carries the
    parent's peak into a child across fork and exec, so it would report rlvr's."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


prompts = json.load(open(prompts_path))
timer = StepTimer()
with tempfile.TemporaryDirectory() as out:
    config = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=len(prompts) * generations,
        gradient_accumulation_steps=1,
        num_generations=generations,
        max_completion_length=new_tokens,
        gradient_checkpointing=bool(checkpointing),
        temperature=1.0,
        beta=0.04,
        loss_type="grpo",
        learning_rate=1e-6,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=device == "cpu",
        bf16=dtype == "bfloat16",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=has_digit,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()

print(
    json.dumps(
        {
            "step_seconds": statistics.median(timer.seconds[warmup:]),
            "generate_seconds": statistics.median(generate_seconds[warmup:]),
            "steps": len(timer.seconds),
            "peak_rss_kb": peak_rss_kb(),
        }
    )
)
