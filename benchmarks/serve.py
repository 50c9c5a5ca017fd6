"""Serving throughput and latency: aggregate tokens/s with 1, 4 and 16 concurrent streams against
one `groundup serve` (loopback only), p50/p99 time to first token; then a bounded load test of
mixed good and bad requests.

    python benchmarks/serve.py                      # trains a char model a few steps (the
                                                    # configs/shakespeare_char.toml shape) in a temp dir
    python benchmarks/serve.py --run runs/shakespeare_char --tokens 56 --requests 48 --threads 1

Target: 16 streams ≥ 4× the aggregate tokens/s of one stream (continuous batching: one forward
pass per decoding step for all of them). Speed does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # the HTTP client the openai package brings (httpx, or its successor httpx2)
    import httpx
except ImportError:
    import httpx2 as httpx

REPO = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "groundup", "serve", "--run", str(run), "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu", "--max-batch", str(max_batch), "--threads", str(threads)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


async def one_stream(h, url: str, model: str, tokens: int, seed: int) -> tuple[float, int]:
    """(time to first token, tokens received) for one streamed completion."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 1.0, "seed": seed, "stream": True}
    start, first, n = time.perf_counter(), None, 0
    async with h.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["finish_reason"] is None:
                n += 1
                if first is None:
                    first = time.perf_counter() - start
    return first, n


async def concurrency_level(url: str, model: str, streams: int, tokens: int, rounds: int) -> dict:
    """`streams` clients, each sending `rounds` requests back to back."""
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=streams + 4)) as h:
        async def client(k):
            return [await one_stream(h, url, model, tokens, seed=1000 * k + r) for r in range(rounds)]

        start = time.perf_counter()
        results = [x for per_client in await asyncio.gather(*(client(k) for k in range(streams))) for x in per_client]
        wall = time.perf_counter() - start
    ttft = sorted(t for t, _ in results)
    total = sum(n for _, n in results)
    return {"streams": streams, "requests": len(results), "tokens": total, "seconds": wall,
            "tokens_per_s": total / wall, "ttft_p50_ms": 1000 * statistics.median(ttft),
            "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1, int(round(0.99 * (len(ttft) - 1))))]}


async def load_test(url: str, model: str, n_good: int, n_bad: int, concurrency: int) -> dict:
    """Mixed good and bad requests, `concurrency` at a time: every good one must be answered in
    full, every bad one with a 4xx OpenAI-shaped error; no 5xx, no dropped connection."""
    bad_bodies = [b"{not json", b"[]", json.dumps({"prompt": "x"}).encode(),
                  json.dumps({"model": "gpt-4", "prompt": "x"}).encode(),
                  json.dumps({"model": model, "prompt": "x", "temperature": -1}).encode(),
                  json.dumps({"model": model, "prompt": "x", "max_tokens": "ten"}).encode(),
                  json.dumps({"model": model, "prompt": "x" * 500}).encode(),
                  json.dumps({"model": model, "prompt": "x", "max_tokens": 100_000}).encode(),
                  json.dumps({"model": model, "prompt": "\u4e2d"}).encode(),
                  json.dumps({"model": model, "prompt": "x" * 2_000_000}).encode()]
    sem = asyncio.Semaphore(concurrency)
    counts: dict[str, int] = {}
    failures = []

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as h:
        async def good(k):
            async with sem:
                body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "seed": k, "stream": k % 2 == 1}
                try:
                    r = await h.post(url + "/v1/completions", json=body)
                except httpx.HTTPError as e:
                    failures.append(f"good #{k}: {type(e).__name__}")
                    return
                counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
                ok = r.status_code == 200 and (r.text.endswith("data: [DONE]\n\n") if k % 2 else
                                               r.json()["usage"]["completion_tokens"] == 8)
                if not ok:
                    failures.append(f"good #{k}: {r.status_code} {r.text[:100]}")

        async def bad(k):
            async with sem:
                try:
                    r = await h.post(url + "/v1/completions", content=bad_bodies[k % len(bad_bodies)],
                                     headers={"content-type": "application/json"})
                except httpx.HTTPError as e:
                    failures.append(f"bad #{k}: {type(e).__name__}")
                    return
                counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
                if not (400 <= r.status_code < 500 and set(r.json().get("error", {})) == {"message", "type", "param", "code"}):
                    failures.append(f"bad #{k}: {r.status_code} {r.text[:100]}")

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(good(k) for k in range(n_good)), *(bad(k) for k in range(n_bad))), 600)
        wall = time.perf_counter() - start
        health = (await h.get(url + "/health")).json()
    return {"requests": n_good + n_bad, "good": n_good, "bad": n_bad, "seconds": wall, "status_counts": counts,
            "failures": failures, "health_after": health}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a run directory (default: train the char shape a few steps)")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=56, help="max_tokens per request (prompt + this ≤ the context)")
    ap.add_argument("--requests", type=int, default=48,
                    help="requests per level, split over its streams (each sends its share back to back): "
                         "every level generates the same number of tokens")
    ap.add_argument("--load", type=int, default=300, help="requests in the load test (2/3 good, 1/3 bad); 0 = skip")
    ap.add_argument("--threads", type=int, default=0, help="the server's torch threads (0 = torch's default)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    levels = [int(s) for s in args.streams.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "bench_char"
            subprocess.run([sys.executable, "-m", "groundup", "train", "--config", str(REPO / "configs/shakespeare_char.toml"),
                            "--set", "max_steps=20", "--set", "eval_interval=20", "--out", str(run)], check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.DEVNULL)
        proc, url = start_server(run, max_batch=max(levels), threads=args.threads)
        try:
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            asyncio.run(concurrency_level(url, model, 2, 8, 1))  # warm up
            rows = []
            for streams in levels:
                row = asyncio.run(concurrency_level(url, model, streams, args.tokens, max(1, args.requests // streams)))
                rows.append(row)
                print(f"{streams:>3} streams: {row['tokens_per_s']:8.1f} tokens/s aggregate "
                      f"({row['tokens']} tokens in {row['seconds']:.2f} s), time to first token "
                      f"p50 {row['ttft_p50_ms']:.1f} ms, p99 {row['ttft_p99_ms']:.1f} ms", flush=True)
            base = rows[0]["tokens_per_s"]
            for row in rows[1:]:
                print(f"{row['streams']} streams / 1 stream: {row['tokens_per_s'] / base:.2f}x")
            figures = {"levels": rows}
            if args.load:
                n_bad = args.load // 3
                load = asyncio.run(load_test(url, model, args.load - n_bad, n_bad, concurrency=32))
                figures["load"] = load
                print(f"load test: {load['requests']} requests ({load['good']} good, {load['bad']} bad), 32 at a time, "
                      f"{load['seconds']:.2f} s; statuses {load['status_counts']}; failures {len(load['failures'])}; "
                      f"server alive: {proc.poll() is None}; after: active {load['health_after']['active']}, "
                      f"waiting {load['health_after']['waiting']}")
                for f in load["failures"][:10]:
                    print("  ", f)
            if args.out:
                args.out.write_text(json.dumps(figures, indent=1))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
