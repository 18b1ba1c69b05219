"""Reading preference pairs and prompt sets (JSON Lines, optionally gzip; or a Hugging Face dataset).

Pair schema (``../shared/data`` layout): ``{"prompt": str | [{"role", "content"}, ...],
"chosen": str, "rejected": str}``. Prompt files: ``{"prompt": ..., "split"?: ...}`` objects, or
plain JSON strings one a line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardclient.protocol import Prompt, plain_prompt


@dataclass(frozen=True)
class Pair:
    prompt: Prompt
    chosen: str
    rejected: str


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    path = Path(path).expanduser()
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_prompt(prompt: Any, where: str) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        return plain_prompt(prompt)
    raise ValueError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages")


def load_pairs(source: str | Path, limit: int | None = None) -> list[Pair]:
    """Pairs from a JSONL(.gz) file, or from a Hugging Face dataset id (``id[:split]``) where the hub
    is reachable."""
    path = Path(source).expanduser()
    if not path.exists():
        return _load_hub_pairs(str(source), limit)
    pairs: list[Pair] = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or not all(k in row for k in ("prompt", "chosen", "rejected")):
            raise ValueError(f"{where}: a pair needs the keys 'prompt', 'chosen', 'rejected'")
        if not isinstance(row["chosen"], str) or not isinstance(row["rejected"], str):
            raise ValueError(f"{where}: 'chosen' and 'rejected' must be strings")
        pairs.append(Pair(_check_prompt(row["prompt"], where), row["chosen"], row["rejected"]))
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def _load_hub_pairs(source: str, limit: int | None) -> list[Pair]:
    name, _, split = source.partition(":")
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(
            f"{source}: no such file, and the 'datasets' package is not installed to read it from the hub"
        ) from None
    ds = datasets.load_dataset(name, split=split or "train")
    pairs = []
    for i, row in enumerate(ds):
        pairs.append(Pair(_check_prompt(row["prompt"], f"{source}[{i}]"), row["chosen"], row["rejected"]))
        if limit and len(pairs) >= limit:
            break
    return pairs


def load_prompts(path: str | Path, split: str | None = None, limit: int | None = None) -> list[Prompt]:
    """Prompts from a prompts.jsonl(.gz) file (objects with 'prompt', optional 'split') or JSONL of strings."""
    path = Path(path).expanduser()
    out: list[Prompt] = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if isinstance(row, str):
            prompt: Prompt = row
        elif isinstance(row, dict) and "prompt" in row:
            if split and row.get("split", split) != split:
                continue
            prompt = _check_prompt(row["prompt"], where)
        else:
            raise ValueError(f"{where}: expected a JSON string or an object with 'prompt'")
        out.append(prompt)
        if limit and len(out) >= limit:
            break
    return out


def response_is_longer(p: Pair) -> bool:
    return len(p.chosen) > len(p.rejected)
