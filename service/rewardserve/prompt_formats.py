"""Prompts as trainers send them: chat-templated strings parsed back into messages.

A trainer that renders prompts with its *policy's* chat template (OpenRLHF: ``prompts`` and
``query``; verl and TRL when the dataset holds templated strings) sends markup such as
``<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n``. A reward model that read that markup
as text would score the template, not the conversation; a decoder RM with its own template would get
it wrapped around the policy's. So before fingerprinting and encoding, each item goes through
``normalise``: a templated string prompt becomes the list of messages it encodes (a system message
the template injected, e.g. SmolLM2's or Qwen's default, is part of that conversation), and the
response loses its trailing end-of-turn / EOS / padding markup.

Formats (``prompt_format``):

- ``auto`` (default): detect the family from its markers; a string without markers stays as it
  is; a string with markers that does not parse is scored as plain text, with a warning.
- ``plain``: never parse.
- a family: ``chatml`` (Qwen, SmolLM, …), ``llama3``, ``llama2`` (also Mistral ``[INST]``),
  ``gemma``, ``phi3``, ``zephyr`` (also Tulu, ``<|user|>``); aliases in ``ALIASES``.
- ``tokenizer:<path or hub id>``: that tokenizer's own chat template. Its structure is learned by
  rendering probe conversations; a parse is accepted only when re-rendering the parsed messages
  with the template gives back the prompt exactly.

Messages prompts pass through unchanged. Everything here is pure except loading a tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rewardclient.protocol import Message, Messages, Prompt, plain_prompt, prompt_fingerprint

from .errors import PromptFormatError

log = logging.getLogger("rewardserve")
# prompt text (characters) a request may have parsed on the event loop: parsing is linear, about
# 0.1 µs per character, so this keeps each request's share of the loop well under a millisecond;
# a request with more is parsed in its worker thread (``runs_inline``)
INLINE_MAX_CHARS = 8_192
INLINE_MAX_TOKENIZER_ITEMS = 8  # a tokenizer's template re-renders each parsed prompt (jinja)


@dataclass(frozen=True)
class Normalised:
    """One item's prompt and response as the reward models read them."""

    prompt: Prompt
    response: str
    format: str  # the family (or tokenizer:…) that parsed the prompt; "plain" when it was not parsed
    warning: str | None = None


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


# -- a tokenizer's own chat template ----------------------------------------------------------------
_S, _U1, _A1, _U2 = "QZXSYSTEMQZX", "QZXUSERONEQZX", "QZXASSISTANTQZX", "QZXUSERTWOQZX"


@dataclass
class TokenizerFormat:
    """A chat template's structure, learned from probe renders: a conversation
    ``[system?] user (assistant user)*`` renders as ``start | sys_start S sys_user``, then the user
    contents separated by ``user_assistant`` A ``assistant_user``, then ``generation``."""

    name: str
    tokenizer: Any
    start: str
    sys_start: str | None
    sys_user: str | None
    user_assistant: str
    assistant_user: str
    generation: str
    end_markers: tuple[str, ...]  # the tokenizer's special tokens, longest first

    @classmethod
    def learn(cls, name: str, tokenizer: Any) -> TokenizerFormat:
        def render(msgs: list[dict[str, str]], gen: bool = True) -> str:
            rendered: str = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            return rendered

        u1, a1, u2 = (
            {"role": "user", "content": _U1},
            {"role": "assistant", "content": _A1},
            {"role": "user", "content": _U2},
        )
        try:
            t = render([u1, a1, u2])
            start, rest = t.split(_U1)
            user_assistant, rest = rest.split(_A1)
            assistant_user, generation = rest.split(_U2)
        except Exception as e:
            raise PromptFormatError(
                f"prompt_format {name!r}: its chat template does not render a user/assistant "
                f"conversation with its contents intact ({type(e).__name__}: {e})"
            ) from None
        if not user_assistant or not assistant_user:
            # with nothing between turns the turns cannot be told apart (and a split would never advance)
            raise PromptFormatError(
                f"prompt_format {name!r}: template not parseable: its chat template puts nothing between a "
                "user turn and an assistant turn, so a rendered conversation cannot be split back into messages"
            )
        sys_start = sys_user = None
        try:
            ts = render([{"role": "system", "content": _S}, u1, a1, u2])
            if ts.count(_S) == 1 and ts.endswith(t[t.index(_U1) :]):
                sys_start, rest = ts.split(_S)
                sys_user = rest.split(_U1)[0]
        except Exception:  # templates without a system role
            pass
        specials = {str(s) for s in getattr(tokenizer, "all_special_tokens", [])}
        for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(tok, "special", False):
                specials.add(str(tok.content))
        return cls(
            name,
            tokenizer,
            start,
            sys_start,
            sys_user,
            user_assistant,
            assistant_user,
            generation,
            tuple(sorted((s for s in specials if s), key=len, reverse=True)),
        )

    def _split(self, text: str) -> Messages | None:
        msgs: Messages = []
        if self.sys_start is not None and self.sys_user and text.startswith(self.sys_start):
            end = text.find(self.sys_user, len(self.sys_start))
            if end >= 0:
                msgs.append({"role": "system", "content": text[len(self.sys_start) : end]})
                body = text[end + len(self.sys_user) :]
            elif text.startswith(self.start):
                body = text[len(self.start) :]
            else:
                return None
        elif text.startswith(self.start):
            body = text[len(self.start) :]
        else:
            return None
        if not body.endswith(self.generation):
            return None
        body = body[: len(body) - len(self.generation)]
        seps, k, pos = (self.user_assistant, self.assistant_user), 0, 0
        while True:
            i = body.find(seps[k % 2], pos)
            if i < 0:
                msgs.append({"role": ("user", "assistant")[k % 2], "content": body[pos:]})
                break
            msgs.append({"role": ("user", "assistant")[k % 2], "content": body[pos:i]})
            pos, k = i + len(seps[k % 2]), k + 1
        return msgs if msgs[-1]["role"] == "user" else None

    def parse(self, text: str) -> Messages | None:
        msgs = self._split(text)
        if msgs is None:
            return None
        try:
            again = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:
            return None
        return msgs if again == text else None

    def clean_response(self, response: str) -> str:
        """The response without its trailing special tokens and without surrounding whitespace (which
        templates put around an assistant's content, and SentencePiece decoding adds to)."""
        return _strip_end(response, self.end_markers).strip()


def normalised_spec(spec: str) -> str:
    """The cache key of ``tokenizer:<spec>``: a local folder as its resolved absolute path (so that
    ``a/../a`` and ``./a`` spellings share one load); a hub id as it is."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


@lru_cache(maxsize=16)
def tokenizer_format(spec: str, download: bool = True) -> TokenizerFormat:
    """The format of ``tokenizer:<spec>`` (a local folder, offline; or a hub id), loaded once; with
    ``download=False`` a hub id is read only from the local hub cache. ``spec`` should be
    ``normalised_spec``'s (``resolve_format`` does that)."""
    name = f"tokenizer:{spec}"
    try:
        from transformers import AutoTokenizer

        path = Path(spec).expanduser()
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec, local_files_only=not download)
    except Exception as e:
        log.warning("prompt_format %r: the tokenizer cannot be loaded: %s: %s", name, type(e).__name__, e)
        raise PromptFormatError(
            f"prompt_format {name!r}: the tokenizer cannot be loaded ({type(e).__name__}; the service log has details)"
        ) from None
    if not getattr(tok, "chat_template", None):
        raise PromptFormatError(f"prompt_format {name!r}: the tokenizer has no chat template")
    return TokenizerFormat.learn(name, tok)


def split_query(query: str, prompt: str) -> str | None:
    """The response in an OpenRLHF ``query`` (= decode(prompt ids + response ids)): what follows the
    ``prompt`` in it. Decoding does not always give the prompt back exactly: SentencePiece tokenizers
    (Llama-2, Mistral) add a space after special tokens (``"<s>[INST]"`` comes back as
    ``"<s> [INST]"``), so differences in whitespace are allowed. ``None``: the query does not start
    with the prompt."""
    if query.startswith(prompt):
        return query[len(prompt) :]
    target = "".join(prompt.split())
    k = 0
    for j, ch in enumerate(query):
        if k == len(target):
            return query[j:]
        if ch.isspace():
            continue
        if ch != target[k]:
            return None
        k += 1
    return "" if k == len(target) else None


# -- names and the one entry point --------------------------------------------------------------------
def format_names() -> list[str]:
    return ["auto", "plain", *FAMILIES, *ALIASES, "tokenizer:<path or hub id>"]


def check_format_name(name: str) -> str:
    """``name`` if it is a valid ``prompt_format`` (syntax only: a tokenizer is not loaded here)."""
    if name in ("auto", "plain") or name in FAMILIES or name in ALIASES:
        return name
    if name.startswith("tokenizer:") and name[len("tokenizer:") :].strip():
        return name
    raise PromptFormatError(f"unknown prompt_format {name!r}; expected one of: {', '.join(format_names())}")


Format = str | Family | TokenizerFormat  # "auto" | "plain" | a family | a learned template


def resolve_format(name: str, download: bool = True) -> Format:
    """The format ``name`` stands for (loads a ``tokenizer:`` format's tokenizer once; ``download``:
    whether a hub id may be fetched from the hub)."""
    check_format_name(name)
    if name in ("auto", "plain"):
        return name
    if name.startswith("tokenizer:"):
        return tokenizer_format(normalised_spec(name[len("tokenizer:") :].strip()), download)
    return FAMILIES[ALIASES.get(name, name)]


def is_small(prompts: Sequence[Prompt], responses: Sequence[str] = ()) -> bool:
    """Whether these texts hold at most ``INLINE_MAX_CHARS`` characters (a message counts its role
    and content, and one more): work linear in them takes well under a millisecond, cheaper on the
    event loop than a thread hop. Stops counting as soon as the budget is spent."""
    budget = INLINE_MAX_CHARS - sum(len(r) for r in responses)
    for p in prompts:
        if isinstance(p, str):
            budget -= len(p)
        else:
            for m in p:
                budget -= len(m["role"]) + len(m["content"]) + 1
                if budget < 0:
                    return False
        if budget < 0:
            return False
    return budget >= 0


_FINGERPRINT_CHUNK = 256  # messages encoded per call: each call holds the GIL only briefly


def fingerprint(prompt: Prompt) -> str:
    """``rewardclient.protocol.prompt_fingerprint(prompt)``, the same digest, with a long conversation
    encoded a slice of messages at a time: one ``json.dumps`` of 100k messages holds the GIL (and so
    stalls the event loop, even from a worker thread) for a tenth of a second or more. The canonical
    encoding of a list is ``[`` + its items' encodings joined by ``,`` + ``]``, so the bytes hashed
    are exactly those of the one-call encoding."""
    if isinstance(prompt, str) or len(prompt) <= _FINGERPRINT_CHUNK:
        return prompt_fingerprint(prompt)
    h = hashlib.sha256(b"[")
    msgs = plain_prompt(prompt)
    for i in range(0, len(msgs), _FINGERPRINT_CHUNK):
        part = json.dumps(msgs[i : i + _FINGERPRINT_CHUNK], ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        h.update(("," if i else "").encode() + part[1:-1].encode("utf-8"))
    h.update(b"]")
    return h.hexdigest()


def runs_inline(prompts: Sequence[Prompt], responses: Sequence[str], fmt: Format) -> bool:
    """Whether normalising these items is cheap enough for the event loop (a few microseconds);
    otherwise the caller runs ``normalise`` in the request's worker thread."""
    if fmt == "plain":
        return True
    if isinstance(fmt, TokenizerFormat) and len(prompts) > INLINE_MAX_TOKENIZER_ITEMS:
        return False
    return is_small([p for p in prompts if isinstance(p, str)], responses)


def normalise(prompt: Prompt, response: str, fmt: Format) -> Normalised:
    """The prompt and response as the reward models read them (see the module docstring); ``fmt`` is
    a resolved format or a format name."""
    if not isinstance(prompt, str) or fmt == "plain":
        return Normalised(prompt, response, "plain")
    if fmt == "auto":
        family = detect_family(prompt)
        if family is None:
            return Normalised(prompt, response, "plain")
        fmt = family
    elif isinstance(fmt, str):
        return normalise(prompt, response, resolve_format(fmt))
    messages = fmt.parse(prompt)
    if messages is None:
        return Normalised(
            prompt,
            response,
            "plain",
            f"the prompt does not parse as a {fmt.name} chat-templated conversation; it was scored as plain text",
        )
    return Normalised(messages, fmt.clean_response(response), fmt.name)
