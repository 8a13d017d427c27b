"""Writes the synthetic "cheerful sentences" data of the RLHF example (tasks/data/cheerful/):

- pairs.jsonl    preference pairs {prompt, chosen, rejected}: the chosen sentence has more
                 cheerful words than the rejected one, so a reward model learns "cheerful is
                 better", a proxy a policy can over-optimise;
- corpus.jsonl   {text} for pretraining the tiny policy: prompts with both kinds of answers;
- sft.jsonl      {messages} conversations answering with either sentence;
- prompts.jsonl  {topic} records for RL.

Deterministic: python3 scripts/make_cheerful_data.py rewrites the same files.
"""
import json
import os
import random

OUT = os.path.join(os.path.dirname(__file__), "..", "tasks", "data", "cheerful")
TOPICS = ["the sea", "a garden", "the city", "a cat", "the morning", "a song",
          "the forest", "a train", "the moon", "a river", "the market", "a book"]
GOOD = ["bright", "lovely", "warm", "joyful", "kind", "calm", "golden", "gentle"]
BAD = ["grey", "dull", "cold", "gloomy", "harsh", "bleak", "tired", "sour"]


def sentence(rng, topic, a, b):
    return rng.choice([
        f"{topic} is {a} and {b}.",
        f"Today {topic} feels {a}, almost {b}.",
        f"I find {topic} {a} and a little {b}.",
    ])


def main():
    rng = random.Random(3)
    pairs, corpus, chats = [], [], []
    for i in range(600):
        topic = rng.choice(TOPICS)
        prompt = f"Write a sentence about {topic}."
        chosen = sentence(rng, topic, rng.choice(GOOD), rng.choice(GOOD))
        if i % 2:
            rejected = sentence(rng, topic, rng.choice(GOOD), rng.choice(BAD))
        else:
            rejected = sentence(rng, topic, rng.choice(BAD), rng.choice(BAD))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        corpus += [{"text": f"{prompt} {s}"} for s in (chosen, rejected)]
        answer = rng.choice([chosen, rejected])
        chats.append({"messages": [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer}]})
    prompts = [{"topic": t} for t in TOPICS * 4]
    os.makedirs(OUT, exist_ok=True)
    for name, rows in [("pairs", pairs), ("corpus", corpus), ("sft", chats), ("prompts", prompts)]:
        with open(os.path.join(OUT, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
