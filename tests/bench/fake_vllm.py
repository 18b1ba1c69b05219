"""A stand-in for vLLM's servers in tests: the same wire shape as the pooling runner's
``POST /classify`` (token-id input, ``use_activation``, ``data[i].probs``, ``usage.prompt_tokens``)
and as the generate runner's ``POST /v1/completions`` for one token with ``logprob_token_ids``
(token-id prompts, ``choices[i].logprobs.top_logprobs[0]`` keyed ``token_id:N``), ``GET /health`` and
the two Prometheus gauges the bench reads, on loopback. No vLLM needed.

In process: ``FakeVllm(reward_fn, logprobs_fn)`` (records every request body). As a server for the
bench's launcher: ``python -m vllm.entrypoints.openai.api_server --model DIR [--runner generate] …``
through a shim package (``write_shim``) that calls ``main``, which scores each sequence with the model
itself (transformers, float32, one sequence at a time, no padding): a sequence classifier for the
pooling runner, a causal LM's full-vocabulary next-token log-probs for the generate runner.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0+fake"


class FakeVllm:
    def __init__(
        self,
        reward: Callable[[list[int]], float] | None,
        served_name: str = "rm",
        port: int = 0,
        logprobs: Callable[[list[int]], list[float]] | None = None,
    ):
        self.reward, self.served_name, self.logprobs = reward, served_name, logprobs
        self.bodies: list[dict] = []
        self.running = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, b"")
                elif self.path == "/metrics":
                    text = f"vllm:num_requests_running {fake.running}\nvllm:num_requests_waiting 0\n"
                    self._send(200, text.encode(), "text/plain")
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                handler = {"/classify": fake.classify, "/v1/completions": fake.complete}.get(self.path)
                if handler is None:
                    self._send(404, b'{"error": "not found"}')
                    return
                with fake._lock:
                    fake.bodies.append(body)
                    fake.running += 1
                try:
                    status, answer = handler(body)
                finally:
                    with fake._lock:
                        fake.running -= 1
                self._send(status, json.dumps(answer).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def complete(self, body: dict) -> tuple[int, dict]:
        """One greedy token per token-id prompt, with the raw log-probs of ``logprob_token_ids``
        (and of the sampled token), as vLLM's completions endpoint answers them."""
        prompts = body.get("prompt")
        if self.logprobs is None:
            return 404, {"error": "this fake runs the pooling runner (no /v1/completions)"}
        if body.get("model") != self.served_name:
            return 404, {"error": f"model {body.get('model')!r} does not exist"}
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, list) for p in prompts)):
            return 400, {"error": "this fake takes lists of token-id prompts only"}
        wanted = body.get("logprob_token_ids")
        if body.get("logprobs") is None or not wanted:
            return 400, {"error": "this fake answers logprob_token_ids only (with logprobs set)"}
        if body.get("max_tokens") != 1 or not body.get("return_tokens_as_token_ids"):
            return 400, {"error": "this fake answers max_tokens 1 with return_tokens_as_token_ids"}
        choices = []
        for i, ids in enumerate(prompts):
            lp = self.logprobs(ids)
            top = max(range(len(lp)), key=lp.__getitem__)
            tops = {f"token_id:{t}": lp[t] for t in [*wanted, top]}
            choices.append(
                {
                    "index": i,
                    "text": "",
                    "finish_reason": "length",
                    "logprobs": {
                        "text_offset": [0],
                        "token_logprobs": [lp[top]],
                        "tokens": [f"token_id:{top}"],
                        "top_logprobs": [tops],
                    },
                }
            )
        n = sum(len(p) for p in prompts)
        usage = {"prompt_tokens": n, "total_tokens": n + len(prompts), "completion_tokens": len(prompts)}
        return 200, {
            "id": "cmpl-fake",
            "object": "text_completion",
            "model": self.served_name,
            "choices": choices,
            "usage": usage,
        }

    def classify(self, body: dict) -> tuple[int, dict]:
        seqs = body.get("input")
        if self.reward is None:
            return 404, {"error": "this fake runs the generate runner (no /classify)"}
        if body.get("model") != self.served_name:
            return 404, {"error": f"model {body.get('model')!r} does not exist"}
        if not (isinstance(seqs, list) and seqs and all(isinstance(s, list) for s in seqs)):
            return 400, {"error": "this fake takes token ids only"}
        if body.get("use_activation", True):
            return 400, {"error": "this fake answers raw logits only (use_activation: false)"}
        data = [
            {"index": i, "label": "LABEL_0", "probs": [self.reward(s)], "num_classes": 1} for i, s in enumerate(seqs)
        ]
        n = sum(len(s) for s in seqs)
        usage = {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0}
        return 200, {"id": "classify-fake", "object": "list", "model": self.served_name, "data": data, "usage": usage}

    def start(self) -> FakeVllm:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeVllm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_reward(model_dir: str) -> Callable[[list[int]], float]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

    def reward(ids: list[int]) -> float:
        with torch.inference_mode():
            return float(model(input_ids=torch.tensor([ids])).logits[0, 0])

    return reward


def model_logprobs(model_dir: str) -> Callable[[list[int]], list[float]]:
    """A causal LM's full-vocabulary log-probs of the token after ``ids`` (float32, unpadded)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logprobs(ids: list[int]) -> list[float]:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            return [float(x) for x in torch.log_softmax(logits, -1)]

    return logprobs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--runner", default="pooling")
    a, rest = p.parse_known_args(argv)
    print(
        f"INFO [fake] non-default args: {{'model': {a.model!r}, 'runner': {a.runner!r}, 'rest': {rest!r}}}", flush=True
    )
    name = a.served_model_name or a.model
    if a.runner == "generate":
        fake = FakeVllm(None, name, a.port, logprobs=model_logprobs(a.model))
    else:
        fake = FakeVllm(model_reward(a.model), name, a.port)
    fake.httpd.serve_forever()


def write_shim(root: Path) -> Path:
    """A package ``vllm`` under ``root`` whose ``vllm.entrypoints.openai.api_server`` runs ``main``
    (put ``root`` and the repository on PYTHONPATH)."""
    pkg = root / "vllm"
    (pkg / "entrypoints" / "openai").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(f'__version__ = "{VERSION}"\n')
    (pkg / "entrypoints" / "__init__.py").write_text("")
    (pkg / "entrypoints" / "openai" / "__init__.py").write_text("")
    (pkg / "entrypoints" / "openai" / "api_server.py").write_text("from tests.bench.fake_vllm import main\n\nmain()\n")
    return root
