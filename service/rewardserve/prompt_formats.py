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

Messages prompts pass through unchanged. Everything here is pure except loading a tokenizer. The
families and their parsers live in prompt_families.py, a tokenizer's learned format in
prompt_tokenizer.py; both are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from rewardclient.protocol import Prompt, plain_prompt, prompt_fingerprint

from .errors import PromptFormatError
from .prompt_families import ALIASES, DETECTION_ORDER, FAMILIES, Family, detect_family
from .prompt_tokenizer import TokenizerFormat, normalised_spec, tokenizer_format

__all__ = [  # the families (prompt_families.py) and tokenizer formats (prompt_tokenizer.py) are re-exported
    "ALIASES",
    "DETECTION_ORDER",
    "FAMILIES",
    "INLINE_MAX_CHARS",
    "INLINE_MAX_TOKENIZER_ITEMS",
    "Family",
    "Format",
    "Normalised",
    "TokenizerFormat",
    "check_format_name",
    "detect_family",
    "fingerprint",
    "format_names",
    "is_small",
    "normalise",
    "normalised_spec",
    "resolve_format",
    "runs_inline",
    "split_query",
    "tokenizer_format",
]

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
