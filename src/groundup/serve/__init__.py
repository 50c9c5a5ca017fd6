"""`groundup serve`: a trained run behind an OpenAI-compatible HTTP API, with a web page that shows
what the model does (token probabilities, attention maps, positional encodings, embeddings).

    groundup serve --run runs/shakespeare_char            # http://127.0.0.1:8000/
"""

from __future__ import annotations

import os
from pathlib import Path

from groundup.errors import GroundupError
from groundup.sample import load_run, store_for_decoding
from groundup.serve.api import create_app

API_KEY_ENV = "GROUNDUP_API_KEY"


def build_app(run_dir, api_key: str | None = None, device: str = "auto", **options):
    """The app for a run directory (what `groundup serve` runs; tests start it in a thread)."""
    if not Path(run_dir).is_dir():
        raise GroundupError(f"--run {run_dir}: no such run directory; train one with `groundup train --out {run_dir}`")
    model, tokenizer, _ = load_run(run_dir, device)
    store_for_decoding(model)
    name = Path(run_dir).resolve().name
    return create_app(model, tokenizer, name, api_key=api_key, **options)


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, device: str = "auto",
          max_batch: int = 16, max_waiting: int = 64, threads: int = 0) -> None:
    """Serve until interrupted. Binds loopback unless told otherwise; the API key comes from the
    argument or the GROUNDUP_API_KEY environment variable (none: no authentication)."""
    import uvicorn

    if not 1 <= max_batch <= 1024 or not 0 <= max_waiting <= 100_000:
        raise GroundupError(f"--max-batch must be in 1..1024 and --max-waiting in 0..100000, got {max_batch} and {max_waiting}")
    if not 0 <= port <= 65535:
        raise GroundupError(f"--port must be in 0..65535, got {port}")
    if threads < 0:
        raise GroundupError(f"--threads must be ≥ 0 (0 = torch's default), got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)  # a decoding step is small: fewer threads can be faster
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    app = build_app(run_dir, api_key=api_key, device=device, max_batch=max_batch, max_waiting=max_waiting)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without an API key; anyone who can reach it can use it "
              f"(--api-key or {API_KEY_ENV})")
    print(f"serving {app.state.model_name} on http://{host}:{port}/  (API: http://{host}:{port}/v1)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


class ServerThread:
    """A server on 127.0.0.1 in a background thread, for tests and benchmarks:

        with ServerThread(app) as url: ...      # url = "http://127.0.0.1:PORT" (a free port)
    """

    def __init__(self, app, host: str = "127.0.0.1"):
        import socket
        import threading

        import uvicorn

        self.socket = socket.socket()
        self.socket.bind((host, 0))  # the OS picks a free port; no race with other servers
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise GroundupError("the test server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
