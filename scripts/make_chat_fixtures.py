"""Writes tests/fixtures/chat_templates.json: what transformers renders for real chat
templates (the trl wheel's trl/chat_templates/, see scripts/chat-templates.sh) over a
set of conversations. tests/chat_template.rs renders the same with rlvr and compares.

    PY=$(scripts/python-env.sh) && "$PY" scripts/make_chat_fixtures.py "$(scripts/chat-templates.sh)"
"""
import json
import pathlib
import sys

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

SPECIALS = {"bos_token": "<BOS>", "eos_token": "<EOS>"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city <today> & now",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
USER = {"role": "user", "content": "What is 17 + 25?"}
SYSTEM = {"role": "system", "content": "You are a careful math tutor."}
ANSWER = {"role": "assistant", "content": "17 + 25 = 42. The answer is 42."}
THOUGHT = {"role": "assistant", "content": "<think>\n17 + 25: 7 + 5 = 12, carry 1.\n</think>\n\nThe answer is 42."}
FOLLOW = {"role": "user", "content": "And 42 * 2?"}
CALL = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "content": "{\"temp\": 21}"}

CONVERSATIONS = {
    "single": {"messages": [USER], "add_generation_prompt": True},
    "system_multi_turn": {"messages": [SYSTEM, USER, ANSWER, FOLLOW], "add_generation_prompt": True},
    "final_assistant": {"messages": [SYSTEM, USER, ANSWER]},
    "continue_final": {"messages": [USER, {"role": "assistant", "content": "Let me think. 17 + 25"}], "continue_final_message": True},
    "thinking_history": {"messages": [USER, THOUGHT, FOLLOW], "add_generation_prompt": True},
    "thinking_last": {"messages": [USER, THOUGHT]},
    "thinking_off": {"messages": [USER], "add_generation_prompt": True, "template_kwargs": {"enable_thinking": False}},
    "tools": {"messages": [USER, CALL, RESULT], "add_generation_prompt": True, "tools": TOOLS},
    "error_roles": {"messages": [USER, USER], "add_generation_prompt": True},
}
# Families: Qwen2.5, Qwen3 (+ its {% generation %} training variant), Llama 3.1/3.2,
# Gemma 3, Phi-3.5, DeepSeek-R1 distill, DeepSeek-V3, Cohere.
NAMES = ["qwen2_5", "qwen3", "qwen3_training", "llama3_1", "llama3_2", "gemma3", "phi3_5",
         "deepseek_r1_distill", "deepseekv3", "cohere", "qwen3_instruct_2507"]

def main():
    templates = pathlib.Path(sys.argv[1])
    cases = []
    for name in NAMES:
        source = (templates / f"{name}.jinja").read_text()
        for label, conv in CONVERSATIONS.items():
            kwargs = dict(SPECIALS, date_string="26 Jul 2024", **conv.get("template_kwargs", {}))
            case = {"template": name, "label": label, "conversation": conv, "special_tokens": SPECIALS}
            try:
                rendered, masks = render_jinja_template(
                    [conv["messages"]], tools=conv.get("tools"), chat_template=source,
                    add_generation_prompt=conv.get("add_generation_prompt", False),
                    continue_final_message=conv.get("continue_final_message", False),
                    return_assistant_tokens_mask=True, **kwargs)
                case["text"] = rendered[0]
                if "{% generation %}" in source or "{%- generation %}" in source:
                    case["assistant_spans"] = masks[0]
            except Exception as e:  # the template raised: rlvr must fail too
                case["error"] = str(e)
            cases.append(case)

    out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/chat_templates.json"
    out.write_text(json.dumps({"transformers": transformers.__version__, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(f"{out}: {len(cases)} cases, {sum('error' in c for c in cases)} errors")


if __name__ == "__main__":
    main()
