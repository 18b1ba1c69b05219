"""Turning a prompt (string or chat messages) and a response into model input, with truncation.

Truncation keeps the end of the response: the oldest prompt tokens go first; the start of the
response is cut only when the response alone does not fit.

Plain format (no chat template): a message list is rendered one message a line as
``"<Role>: <content>"`` (e.g. ``"User: Hi"``) joined by newlines; a string prompt is used as is.
"""

from __future__ import annotations

from typing import Any

from rewardclient.protocol import Prompt

from .base import Encoded


def render_plain(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def encode_pair(tokenizer: Any, prompt: Prompt, response: str, max_length: int) -> Encoded:
    """Encode as a text pair (encoder models): ``[CLS] prompt [SEP] response [SEP]`` or the model's
    own pair format, truncated to ``max_length`` tokens."""
    text = render_plain(prompt)
    response_chars = len(response)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    p = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    r = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    np_, nr = len(p["input_ids"]), len(r["input_ids"])
    truncated = False
    if nr > budget:  # the response alone does not fit: no prompt, the end of the response
        response = response[r["offset_mapping"][nr - budget][0] :]
        text = ""
        truncated = True
    elif np_ + nr > budget:
        keep_p = budget - nr
        text = text[p["offset_mapping"][np_ - keep_p][0] :] if keep_p > 0 else ""
        truncated = True
    # re-tokenizing a cut string can differ by a token at the cut: the tokenizer's own (left-side)
    # truncation is the final guard
    enc = tokenizer(text, response, truncation="longest_first", max_length=max_length)
    seq = enc.sequence_ids()
    segments = [-1 if s is None else s for s in seq]
    return Encoded(
        input_ids=list(enc["input_ids"]),
        token_type_ids=list(enc["token_type_ids"]) if "token_type_ids" in enc else None,
        segments=segments,
        truncated=truncated,
        response_chars=response_chars,
    )


def encode_chat(tokenizer: Any, prompt: Prompt, response: str, max_length: int) -> Encoded:
    """Encode with the tokenizer's chat template (decoder reward models): the conversation plus the
    response as the final assistant turn, tokenized as one sequence."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prefix):  # templates that render the last turn differently
        prefix = tokenizer.apply_chat_template(messages, tokenize=False)
    suffix = full[len(prefix) :] if full.startswith(prefix) else response
    p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    return _join_single(p_ids, r_ids, max_length)


def encode_single(tokenizer: Any, prompt: Prompt, response: str, max_length: int) -> Encoded:
    """Plain single-sequence format for decoder models without a chat template:
    ``render_plain(prompt) + "\\n" + response``, with the tokenizer's BOS if it adds one."""
    text = render_plain(prompt)
    bos = tokenizer("", add_special_tokens=True)["input_ids"]
    p_ids = bos + tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return _join_single(p_ids, r_ids, max_length)


def _join_single(p_ids: list[int], r_ids: list[int], max_length: int) -> Encoded:
    truncated = False
    if len(r_ids) >= max_length:
        r_ids, p_ids, truncated = r_ids[len(r_ids) - max_length :], [], True
    elif len(p_ids) + len(r_ids) > max_length:
        p_ids, truncated = p_ids[len(p_ids) + len(r_ids) - max_length :], True
    return Encoded(
        input_ids=p_ids + r_ids,
        segments=[0] * len(p_ids) + [1] * len(r_ids),
        truncated=truncated,
    )
