"""Prompts as the reward models read them: a request's ``prompt_format`` resolved (a ``tokenizer:``
format's tokenizer loaded once, off the event loop) and each (prompt, response) normalised
(``prompt_formats``): templated string prompts parsed back into messages, the responses' trailing
end-of-turn markup removed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rewardclient.protocol import Prompt

from . import prompt_formats
from .config import Settings


class Normaliser:
    def __init__(self, settings: Settings):
        self.settings = settings

    async def prompt_format(self, name: str | None) -> prompt_formats.Format:
        """The format named by a request (or the service's ``prompt_format``); a relative tokenizer path
        is relative to the config file. Only a configured format may download a tokenizer from the hub:
        a request's ``tokenizer:`` names a local folder or a hub id already in the local cache."""
        name = self.settings.check_prompt_format(name or self.settings.prompt_format)
        if name.startswith("tokenizer:"):
            configured = name in (
                self.settings.prompt_format,
                self.settings.openrlhf.prompt_format,
                self.settings.slime.prompt_format,
            )
            name = "tokenizer:" + self.settings.resolve_path(name[len("tokenizer:") :].strip())
            return await asyncio.to_thread(prompt_formats.resolve_format, name, configured)
        return prompt_formats.resolve_format(name)

    async def __call__(
        self, prompts: Sequence[Prompt], responses: Sequence[str], prompt_format: str | None
    ) -> list[prompt_formats.Normalised]:
        fmt = await self.prompt_format(prompt_format)

        def run() -> list[prompt_formats.Normalised]:
            return [prompt_formats.normalise(p, r, fmt) for p, r in zip(prompts, responses)]

        # long texts, or many items of a tokenizer's template (jinja re-renders each), go to a thread
        if not prompt_formats.runs_inline(prompts, responses, fmt):
            return await asyncio.to_thread(run)
        return run()
