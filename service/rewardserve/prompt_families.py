"""The built-in chat-template families (``FAMILIES``, ``ALIASES``) and their linear parsers: a
templated string prompt back into messages, a generated response without its end-of-turn markup."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rewardclient.protocol import Message, Messages


# -- the built-in families ------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, ...]  # any of these in a string marks it as templated in this family
    parse: Callable[[str], Messages | None]
    end_markers: tuple[str, ...]  # trailing end-of-turn / EOS / pad markup of a generated response
    trims: bool = False  # the template trims contents (and may pad the assistant turn with spaces)

    def clean_response(self, response: str) -> str:
        """The response without its trailing end-of-turn / EOS / padding markup."""
        out = _strip_end(response, self.end_markers)
        return out.strip() if self.trims else out


def _skip(text: str, pos: int, bos: tuple[str, ...]) -> int:
    """Past any BOS tokens and whitespace at ``pos``."""
    while True:
        start = pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        for b in bos:
            if text.startswith(b, pos):
                pos += len(b)
        if pos == start:
            return pos


def _tagged(
    turn: str, open_turn: str, bos: tuple[str, ...] = (), roles: dict[str, str] | None = None
) -> Callable[[str], Messages | None]:
    """A parser for templates of repeated ``<header role> content <end>`` turns: ``turn`` has groups
    ``role`` and ``content``; ``open_turn`` is the generation prompt (an open assistant header)."""
    turn_re = re.compile(turn, re.S)
    open_re = re.compile(rf"(?:{open_turn})\s*\Z", re.S)
    roles = roles or {}

    def parse(text: str) -> Messages | None:
        # linear in len(text): each turn is matched once from where the last one ended, and the
        # "only whitespace left" test compares positions (never slices the rest of the text)
        end = len(text.rstrip())
        pos, msgs = _skip(text, 0, bos), list[Message]()
        while pos < end:
            if open_re.match(text, pos):
                break
            m = turn_re.match(text, pos)
            if m is None:
                return None
            msgs.append({"role": roles.get(m["role"], m["role"]), "content": m["content"]})
            pos = m.end()
        return msgs or None

    return parse


_INST_TURN = re.compile(r"\[INST\](?P<user>.*?)\[/INST\](?P<reply>.*?)(?=(?:<s>)?\s?\[INST\]|\Z)", re.S)
_LLAMA2_SYS = re.compile(r"<<SYS>>\n(?P<system>.*?)\n<</SYS>>\n\n(?P<user>.*)\Z", re.S)


def _parse_inst(text: str) -> Messages | None:
    """Llama-2 (``<s>[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nU [/INST] A </s>``) and Mistral
    (``<s>[INST] U [/INST]A</s>``)."""
    pos, msgs = 0, list[Message]()
    while True:
        pos = _skip(text, pos, ("<s>",))
        if pos >= len(text):
            return msgs or None
        m = _INST_TURN.match(text, pos)
        if m is None:
            return None
        user = m["user"].strip()
        if not msgs and (sm := _LLAMA2_SYS.match(user)):
            msgs.append({"role": "system", "content": sm["system"]})
            user = sm["user"].strip()
        msgs.append({"role": "user", "content": user})
        reply = _strip_end(m["reply"], ("</s>",)).strip()
        if reply:
            msgs.append({"role": "assistant", "content": reply})
        pos = m.end()


_ROLE_TAGS = r"<\|(?P<role>system|user|assistant)\|>\n"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama3",
            ("<|start_header_id|>", "<|eot_id|>"),
            _tagged(
                r"<\|start_header_id\|>(?P<role>[^<\n]+)<\|end_header_id\|>\n\n(?P<content>.*?)<\|eot_id\|>",
                r"<\|start_header_id\|>assistant<\|end_header_id\|>",
                bos=("<|begin_of_text|>",),
            ),
            ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"),
            trims=True,
        ),
        Family(
            "chatml",
            ("<|im_start|>", "<|im_end|>"),
            _tagged(r"<\|im_start\|>(?P<role>[^<\n]+)\n(?P<content>.*?)<\|im_end\|>\n?", r"<\|im_start\|>assistant\n?"),
            ("<|im_end|>", "<|endoftext|>"),
        ),
        Family(
            "gemma",
            ("<start_of_turn>", "<end_of_turn>"),
            _tagged(
                r"<start_of_turn>(?P<role>[^<\n]+)\n(?P<content>.*?)<end_of_turn>\n?",
                r"<start_of_turn>model\n?",
                bos=("<bos>",),
                roles={"model": "assistant"},
            ),
            ("<end_of_turn>", "<eos>", "<pad>"),
            trims=True,
        ),
        Family(
            "phi3",
            ("<|end|>",),
            _tagged(_ROLE_TAGS + r"(?P<content>.*?)<\|end\|>\n?", r"<\|assistant\|>\n?", bos=("<s>",)),
            ("<|end|>", "<|endoftext|>"),
        ),
        Family(
            "zephyr",
            ("<|user|>", "<|assistant|>", "<|system|>"),
            _tagged(
                # Zephyr: content + EOS + "\n"; Tulu: user content + "\n", assistant content + EOS + "\n"
                _ROLE_TAGS + r"(?P<content>.*?)(?:</s>|<\|endoftext\|>)?(?:\n(?=<\|(?:system|user|assistant)\|>)|\Z)",
                r"<\|assistant\|>\n?",
                bos=("<s>",),
            ),
            ("</s>", "<|endoftext|>", "<pad>"),
        ),
        Family("llama2", ("[INST]", "[/INST]"), _parse_inst, ("</s>", "<unk>", "<pad>"), trims=True),
    )
}
ALIASES = {
    "qwen": "chatml",
    "smollm": "chatml",
    "llama-3": "llama3",
    "llama-2": "llama2",
    "mistral": "llama2",
    "inst": "llama2",
    "phi-3": "phi3",
    "tulu": "zephyr",
}
DETECTION_ORDER = ("llama3", "chatml", "gemma", "phi3", "zephyr", "llama2")  # phi3 before zephyr: same role tags


def detect_family(text: str) -> Family | None:
    """The family whose markers appear in ``text`` (``None``: not templated)."""
    for name in DETECTION_ORDER:
        fam = FAMILIES[name]
        if any(m in text for m in fam.markers):
            return fam
    return None


def _strip_end(response: str, markers: tuple[str, ...]) -> str:
    """``response`` without trailing end markers (and the whitespace around and between them);
    unchanged when it does not end with one. Linear in the length of what is removed."""
    end = len(response)
    while True:
        e = end
        while e > 0 and response[e - 1].isspace():
            e -= 1
        for m in markers:
            if m and response.endswith(m, 0, e):
                end = e - len(m)
                break
        else:
            return response[:end]
