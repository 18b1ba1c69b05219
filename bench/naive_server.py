"""The baseline: a per-request reward server, the way common open-source reward servers are written.

A minimal FastAPI app with a plain ``def`` endpoint (FastAPI runs it in its thread pool), served by
uvicorn with one worker. Each request is tokenized and run through the model on arrival, as one
forward of that request's items in the order given (no batching across requests, no length
sorting, no queue or back-pressure). It loads the same backbones with the same
``rewardserve.backends.build_backend`` and ``torch_threads`` setting as the service, and answers
``POST /v1/score`` with raw rewards and ``usage`` (no references or transforms: less work than the
service does per request).

Run: ``python -m bench.naive_server --port 8001 [--config FILE]``. ``GET /readyz`` is 200 once the
model is loaded (it loads before the socket opens); ``GET /busy`` gives the requests in progress.
"""

from __future__ import annotations

import argparse
import os
import threading

from pydantic import BaseModel

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Item(BaseModel):
    prompt: str | list[dict[str, str]]
    response: str


class ScoreRequest(BaseModel):
    items: list[Item]
    models: list[str] | None = None


def create_naive_app(config: str | None = None):
    import torch
    from fastapi import FastAPI, HTTPException

    from rewardserve.backends import build_backend
    from rewardserve.config import load_settings

    settings = load_settings(config)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    backends = {name: build_backend(name, cfg, settings) for name, cfg in settings.backbones.items()}
    for b in backends.values():
        b.warmup()
    model_of = {m: (bname, col) for bname, b in backends.items() for col, m in enumerate(b.model_names)}

    app = FastAPI(title="naive reward server")
    lock = threading.Lock()
    busy = {"in_progress": 0, "served": 0}

    @app.post("/v1/score")
    def score(req: ScoreRequest):
        with lock:
            busy["in_progress"] += 1
        try:
            names = req.models or list(model_of)
            unknown = [m for m in names if m not in model_of]
            if unknown:
                raise HTTPException(404, f"unknown model {unknown[0]!r}")
            raw: dict[str, list[float]] = {}
            tokens = 0
            for bname in dict.fromkeys(model_of[m][0] for m in names):
                b = backends[bname]
                encs = [b.encode(it.prompt, it.response) for it in req.items]
                tokens += sum(e.length for e in encs)
                rows = b.forward(encs)
                for m in names:
                    if model_of[m][0] == bname:
                        raw[m] = rows[:, model_of[m][1]].tolist()
            results = [{"raw": {m: raw[m][i] for m in names}} for i in range(len(req.items))]
            return {"results": results, "usage": {"items": len(req.items), "tokens": tokens}}
        finally:
            with lock:
                busy["in_progress"] -= 1
                busy["served"] += 1

    @app.get("/readyz")
    def readyz():
        return {"ready": True}

    @app.get("/busy")
    def busy_route():
        with lock:
            return dict(busy)

    @app.get("/info")
    def info():
        return {
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
            "uvicorn_workers": 1,
            "backbones": {
                n: {"device": str(b.device), "dtype": str(b.dtype).replace("torch.", ""), "models": b.model_names}
                for n, b in backends.items()
            },
        }

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.naive_server", description="per-request baseline reward server")
    p.add_argument("--config", default=None, help="rewardserve config (default: the embedded one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    app = create_naive_app(a.config)
    uvicorn.run(app, host=a.host, port=a.port, workers=1, log_level=a.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
