"""``tokenizer:<path or hub id>`` formats: a tokenizer's own chat template, its structure learned by
rendering probe conversations (``TokenizerFormat``); a parse is accepted only when re-rendering the
parsed messages with the template gives back the prompt exactly."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rewardclient.protocol import Messages

from .errors import PromptFormatError
from .prompt_families import _strip_end

log = logging.getLogger("rewardserve")


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
