"""`groundup serve`: the OpenAI-compatible API against a live server (the official openai client),
continuous batching, bad requests, limits, disconnects, and the inspection endpoints."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import openai
import pytest
import torch

try:  # the HTTP client the openai package brings (httpx, or its successor httpx2)
    import httpx
except ImportError:
    import httpx2 as httpx

from groundup.sample import SamplingSettings, generate, load_run, prompt_ids
from groundup.serve import ServerThread, build_app


PROMPT = "ROMEO:\n"


@pytest.fixture(scope="module")
def run_dir(served_run):
    return served_run


@pytest.fixture(scope="module")
def server(run_dir):
    app = build_app(run_dir, device="cpu", max_batch=8, max_waiting=256)
    with ServerThread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def solo(run_dir, prompt: str, **settings) -> str:
    """What sample.generate (one sequence, no server) makes from the same settings."""
    model, tokenizer, _ = load_run(run_dir, "cpu")
    ids = prompt_ids(tokenizer, prompt, allowed_special="none")
    return tokenizer.decode(list(generate(model, ids, SamplingSettings(**settings))))


# ---- the official client, plain and streamed ---------------------------------------------------------
def test_models_lists_the_run(client, run_dir):
    assert [m.id for m in client.models.list().data] == [run_dir.name]


def test_completion_plain_and_streamed_match_sample_generate(client, run_dir):
    kw = dict(model=run_dir.name, prompt=PROMPT, max_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    plain = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True))
    expected = solo(run_dir, PROMPT, max_new_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    assert plain.choices[0].text == expected
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 12 and plain.usage.prompt_tokens == len(PROMPT)
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"


def test_chat_plain_and_streamed(client, run_dir):
    kw = dict(model=run_dir.name, messages=[{"role": "user", "content": "Good morrow"}], max_tokens=10, seed=3)
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert plain.choices[0].message.content == streamed
    # the documented template: the model continues this text
    assert streamed.split("\n\n")[0] == solo(run_dir, "USER:\nGood morrow\n\nASSISTANT:\n", max_new_tokens=10, seed=3).split("\n\n")[0]
    assert plain.usage.prompt_tokens == len("USER:\nGood morrow\n\nASSISTANT:\n")


def test_sse_wire_format_ends_with_done(server, run_dir):
    body = {"model": run_dir.name, "prompt": PROMPT, "max_tokens": 3, "stream": True}
    r = httpx.post(server[0] + "/v1/completions", json=body, timeout=30)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(p["object"] == "text_completion" for p in payloads)
    assert [p["choices"][0]["finish_reason"] for p in payloads] == [None, None, None, "length"]


def test_logprobs_are_the_models(client, run_dir):
    r = client.completions.create(model=run_dir.name, prompt=PROMPT, max_tokens=6, seed=1, logprobs=3)
    lp = r.choices[0].logprobs
    model, tokenizer, _ = load_run(run_dir, "cpu")
    ids = tokenizer.encode(PROMPT + r.choices[0].text)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], -1)
    n = len(tokenizer.encode(PROMPT))
    for k, token_lp in enumerate(lp.token_logprobs):
        assert token_lp == pytest.approx(float(logp[n - 1 + k, ids[n + k]]), abs=1e-4)
        best = torch.topk(logp[n - 1 + k], 3)
        assert list(lp.top_logprobs[k].values()) == pytest.approx(best.values.tolist(), abs=1e-4)
    chat = client.chat.completions.create(model=run_dir.name, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, seed=1, logprobs=True, top_logprobs=2)
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in chat.choices[0].logprobs.content)


def test_stop_string_cuts_the_text_plain_and_streamed(client, run_dir):
    kw = dict(model=run_dir.name, prompt=PROMPT, temperature=0, max_tokens=30)
    full = client.completions.create(**kw).choices[0].text
    stop = full[5:7]  # two characters the greedy text certainly contains
    want = full[: full.index(stop)]
    plain = client.completions.create(**kw, stop=[stop])
    streamed = list(client.completions.create(**kw, stop=stop, stream=True))
    assert plain.choices[0].text == want and plain.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_each_match_their_solo_generation(server, run_dir):
    """Continuous batching: sequences with different prompts (so different positions) that
    join at different steps give exactly what each gives alone."""
    prompts = ["ROMEO:\n", "JULIET:\nO Romeo", "A", "First Citizen:\nBefore we proceed"]

    async def main():
        c = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)
        jobs = [c.completions.create(model=run_dir.name, prompt=p, max_tokens=6 + k, seed=k, temperature=1.0)
                for k, p in enumerate(prompts * 2)]
        return await asyncio.gather(*jobs)

    steps_before = server[1].state.scheduler.steps
    results = asyncio.run(main())
    for k, (p, r) in enumerate(zip(prompts * 2, results)):
        assert r.choices[0].text == solo(run_dir, p, max_new_tokens=6 + k, seed=k, temperature=1.0), p
    # batched: far fewer forward passes than tokens
    assert server[1].state.scheduler.steps - steps_before < sum(6 + k for k in range(8))


# ---- bad requests: OpenAI-shaped errors, never a 500 -------------------------------------------------
def _bad(run_dir):
    m = run_dir.name
    ok = {"model": m, "prompt": "hi"}
    return [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"prompt": "hi"}, 400, "model"),
        ({**ok, "model": "gpt-4"}, 404, "model"),
        ({**ok, "temperature": -0.5}, 400, "temperature"),
        ({**ok, "temperature": "hot"}, 400, "temperature"),
        ({**ok, "max_tokens": "5"}, 400, "max_tokens"),
        ({**ok, "max_tokens": 0}, 400, "max_tokens"),
        ({**ok, "max_tokens": 10_000}, 400, "max_tokens"),
        ({**ok, "prompt": "x" * 60}, 400, "prompt"),
        ({**ok, "prompt": "\u4e2d\u6587"}, 400, "prompt"),  # characters the char vocabulary lacks
        ({**ok, "prompt": [10_000]}, 400, "prompt"),
        ({**ok, "top_p": 0}, 400, "top_p"),
        ({**ok, "n": 2}, 400, "n"),
        ({**ok, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({**ok, "logprobs": 50}, 400, "top_logprobs"),
        ({**ok, "stream": "yes"}, 400, "stream"),
        ({**ok, "seed": 2**64}, 400, "seed"),
        ({**ok, "temperature": 1e-30}, 400, "temperature"),
        ({"model": m, "prompt": "a" * 2_000_000}, 413, None),
    ]


@pytest.mark.parametrize("case", range(20))
def test_bad_completion_requests_get_openai_errors(server, run_dir, case):
    body, status, param = _bad(run_dir)[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server[0] + "/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param:
        assert error["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": -1}, "top_logprobs"),
])
def test_bad_chat_requests_get_openai_errors(server, run_dir, body, param):
    r = httpx.post(server[0] + "/v1/chat/completions", json={"model": run_dir.name, **body}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_route_and_bad_query_are_openai_shaped(server):
    r = httpx.get(server[0] + "/v1/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server[0] + "/api/embeddings/nearest", params={"token": "e", "k": "many"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "k"


def test_official_client_raises_its_own_errors(client, run_dir):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=run_dir.name, prompt="hi", max_tokens=1000)


def test_user_text_never_becomes_a_special_token(small_bpe):
    """A prompt that spells <|endoftext|> is those characters, through the server's own encoding."""
    from groundup.config import ModelConfig
    from groundup.model import GPT
    from groundup.serve.api import create_app

    eot = small_bpe.eot_id
    assert eot is not None and small_bpe.encode("<|endoftext|>", allowed_special="all") == [eot]  # when asked
    model = GPT(ModelConfig(vocab_size=small_bpe.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    with ServerThread(create_app(model, small_bpe, "bpe")) as url:
        r = httpx.post(url + "/api/tokenize", json={"text": "say <|endoftext|> now"}, timeout=30).json()
        assert eot not in r["ids"] and "".join(r["pieces"]) == "say <|endoftext|> now"
        c = httpx.post(url + "/v1/completions", json={"model": "bpe", "prompt": "<|endoftext|>", "max_tokens": 1}, timeout=30)
        assert c.json()["usage"]["prompt_tokens"] == len(small_bpe.encode("<|endoftext|>", allowed_special="none")) > 1


@pytest.mark.parametrize("positional", ["rope", "learned", "sinusoidal"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_batched_decoding_with_per_row_positions_matches_full_forward(positional, attention):
    """The scheduler's step: rows of different lengths, each feeding one token at its own position
    into its own cache row, give the logits a full forward of each sequence gives."""
    from groundup.config import ModelConfig
    from groundup.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, positional=positional,
                            attention=attention)).double().eval()
    if positional == "learned":
        torch.nn.init.normal_(model.position_embedding.weight)
    sequences = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12]]
    cache = model.new_cache(4)  # one row more than used
    with torch.no_grad():
        for row, seq in enumerate(sequences):
            model(torch.tensor([seq]), cache=cache.rows(row, row + 1), start=0)
        positions = torch.tensor([len(s) for s in sequences])
        logits = model(torch.tensor([[13], [14], [15]]), cache=cache.rows(0, 3), start=positions)[0][:, -1]
        for row, (seq, new) in enumerate(zip(sequences, [13, 14, 15])):
            full = model(torch.tensor([seq + [new]]))[0][0, -1]
            assert torch.allclose(logits[row], full, atol=1e-10), (positional, attention, row)


# ---- limits, keys, the queue, disconnects ---------------------------------------------------------------
def test_api_key_required_when_set(run_dir, monkeypatch):
    monkeypatch.setenv("GROUNDUP_API_KEY", "s3cret")
    from groundup.serve import API_KEY_ENV
    import os

    app = build_app(run_dir, api_key=os.environ[API_KEY_ENV], device="cpu")
    with ServerThread(app) as url:
        r = httpx.get(url + "/v1/models", timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert c.completions.create(model=run_dir.name, prompt="a", max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_full_queue_answers_429(run_dir):
    app = build_app(run_dir, device="cpu", max_batch=1, max_waiting=1)
    scheduler = app.state.scheduler
    gate, entered, original = threading.Event(), threading.Event(), scheduler._step
    scheduler._step = lambda admitted: (entered.set(), gate.wait(10), original(admitted))  # hold the decoding loop
    body = {"model": run_dir.name, "prompt": "a", "max_tokens": 2}
    with ServerThread(app) as url:
        with httpx.Client(timeout=30) as h:
            results = []
            first = threading.Thread(target=lambda: results.append(h.post(url + "/v1/completions", json=body)))
            second = threading.Thread(target=lambda: results.append(h.post(url + "/v1/completions", json=body)))
            first.start()
            # the first has been admitted and its decoding step is held at the gate ('waiting == 0' alone
            # also holds before it arrives, and then both requests could race for the one waiting place)
            assert entered.wait(10) and scheduler.stats()["waiting"] == 0
            second.start()
            _wait(lambda: scheduler.stats()["waiting"] == 1)
            third = h.post(url + "/v1/completions", json=body, timeout=5)  # answered at once, not queued
            assert third.status_code == 429 and third.json()["error"]["type"] == "rate_limit_error"
            gate.set()
            first.join(20), second.join(20)
            assert sorted(r.status_code for r in results) == [200, 200]


def _wait(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_a_failing_sequence_fails_alone(run_dir, monkeypatch):
    import groundup.serve.engine as engine

    original = engine.draw_token

    def draw(logits, settings, generator):
        if settings.seed == 666:
            raise RuntimeError("boom")
        return original(logits, settings, generator)

    monkeypatch.setattr(engine, "draw_token", draw)
    with ServerThread(build_app(run_dir, device="cpu")) as url:
        async def main():
            async with httpx.AsyncClient(timeout=30) as h:
                bodies = [{"model": run_dir.name, "prompt": "a", "max_tokens": 20, "seed": s} for s in (1, 666, 2)]
                return await asyncio.gather(*(h.post(url + "/v1/completions", json=b) for b in bodies))

        ok1, failed, ok2 = asyncio.run(main())
    assert failed.status_code == 503 and "boom" in failed.json()["error"]["message"]
    assert ok1.json()["usage"]["completion_tokens"] == ok2.json()["usage"]["completion_tokens"] == 20


def test_client_that_disconnects_mid_stream_frees_its_slot(run_dir):
    app = build_app(run_dir, device="cpu", max_batch=2)
    scheduler = app.state.scheduler
    original = scheduler._step
    scheduler._step = lambda admitted: (time.sleep(0.02), original(admitted))  # 20 ms a step: ~1 s for 45 tokens
    body = {"model": run_dir.name, "prompt": "a", "max_tokens": 45, "stream": True}
    with ServerThread(app) as url:
        with httpx.Client(timeout=30) as h:
            with h.stream("POST", url + "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                got = [next(lines) for _ in range(4)]  # two events (each a line and a blank)
                assert got[0].startswith("data: ")
                assert scheduler.stats()["active"] == 1
            # the connection is closed here, ~2 tokens in
            _wait(lambda: scheduler.stats()["active"] == 0, 3.0)
            assert scheduler.steps < 30  # freed long before its 45 tokens
            ok = h.post(url + "/v1/completions", json={**body, "stream": False, "max_tokens": 3})
            assert ok.status_code == 200


def test_load_mixed_good_and_bad_requests(server, run_dir):
    """A few hundred requests, 32 at a time: every good one answered in full, every bad one a 4xx."""
    m = run_dir.name
    good = [{"model": m, "prompt": "ROMEO:\n", "max_tokens": 4, "seed": k} for k in range(150)]
    bad = [b for b, _, _ in _bad(run_dir)[:19]] * 5

    async def main():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=60, limits=limits) as h:
            sem = asyncio.Semaphore(32)

            async def send(body, stream):
                async with sem:
                    if isinstance(body, dict):
                        body = json.dumps(body if stream is None else {**body, "stream": stream}).encode()
                    return await h.post(server[0] + "/v1/completions", content=body,
                                        headers={"content-type": "application/json"})

            tasks = [send(b, k % 2 == 1) for k, b in enumerate(good)] + [send(b, None) for b in bad]
            return await asyncio.gather(*tasks)

    start = time.monotonic()
    responses = asyncio.run(main())
    assert time.monotonic() - start < 120
    good_r, bad_r = responses[:len(good)], responses[len(good):]
    assert all(r.status_code == 200 for r in good_r)
    for k, r in enumerate(good_r):
        if k % 2:
            assert r.text.endswith("data: [DONE]\n\n") and r.text.count('"finish_reason":"length"') + r.text.count('"finish_reason": "length"') == 1
        else:
            assert r.json()["usage"]["completion_tokens"] == 4
    assert [r.status_code for r in bad_r] == [status for _, status, _ in _bad(run_dir)[:19]] * 5
    assert all(set(r.json()["error"]) == {"message", "type", "param", "code"} for r in bad_r)
    assert httpx.get(server[0] + "/health", timeout=30).json()["active"] == 0


def test_cli_serve_bad_run_is_a_clean_error(tmp_path, capsys):
    from groundup.cli import main  # in-process: the subprocess path is covered by the other CLI tests

    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    assert "error: --run" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


# ---- what the page shows ------------------------------------------------------------------------------------
def test_inspect_attention_is_the_models(server, run_dir):
    model, tokenizer, _ = load_run(run_dir, "cpu")
    ids = tokenizer.encode("ROMEO:\nWhat light")
    d = httpx.post(server[0] + "/api/inspect", json={"ids": ids}, timeout=30).json()
    A = torch.tensor(d["attention"])  # (layer, head, T, T)
    T = len(ids)
    assert A.shape == (model.config.n_layer, model.config.n_head, T, T)
    assert torch.allclose(A.sum(-1), torch.ones(A.shape[:-1]), atol=1e-5)
    assert torch.all(A.triu(1) == 0)  # causal
    # layer 0 by hand from the model's own pieces: softmax(Q Kᵀ / √d_k + mask), rotary positions
    from groundup.model.positional import apply_rope

    with torch.no_grad():
        block = model.blocks[0].attention
        x = model.blocks[0].norm_attention(model.token_embedding(torch.tensor([ids])))
        qkv = block.qkv(x).view(1, T, 3, block.n_head, block.d_k)
        q, k = apply_rope(qkv[:, :, :2], block.rope_cos[:T, None, None], block.rope_sin[:T, None, None]).unbind(2)
        scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1) / block.d_k ** 0.5
        expected = torch.softmax(scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1)[0]
        probs = torch.softmax(model(torch.tensor([ids]))[0][0], -1)
    assert torch.allclose(A[0], expected, atol=1e-5)
    top = d["top"][3]
    assert [t["id"] for t in top] == torch.topk(probs[3], 10).indices.tolist()
    assert [t["prob"] for t in top] == pytest.approx(torch.topk(probs[3], 10).values.tolist(), abs=1e-5)


def test_inspect_labels_heads_by_the_geometry_labs_scores(server, run_dir):
    """Head types on the page are the geometry lab's measurement of this model, not a guess."""
    import dataclasses

    from groundup.labs.geometry import heads
    from groundup.model import GPT

    model, tokenizer, _ = load_run(run_dir, "cpu")
    d = httpx.post(server[0] + "/api/inspect", json={"ids": tokenizer.encode("ROMEO:")}, timeout=30).json()
    math_model = GPT(dataclasses.replace(model.config, attention="math"))
    math_model.load_state_dict(model.state_dict())
    c = model.config
    repeated = heads.repeated_random_tokens([i for i in range(c.vocab_size) if i != tokenizer.eot_id],
                                            min(32, c.block_size // 2), 8, seed=0)
    with torch.no_grad():
        expected = heads.head_scores(math_model, repeated, repeated)
    for kind in heads.KINDS:
        assert np.allclose(d["head_scores"][kind], expected[kind], atol=1e-5)
    assert d["head_kinds"] == heads.classify(d["head_scores"])
    assert len(d["head_kinds"]) == c.n_layer and all(len(layer) == c.n_head for layer in d["head_kinds"])


def test_positions_dot_product_depends_on_offset_only(server):
    d = httpx.get(server[0] + "/api/positions", timeout=30).json()
    pe = np.array(d["table"])
    for p, q in [(5, 2), (20, 17), (40, 37), (9, 0)]:
        assert pe[p] @ pe[q] == pytest.approx(d["dots"][p - q], abs=1e-3)
    assert d["dots"][0] == pytest.approx(pe.shape[1] / 2, rel=1e-4)  # Σ sin² + cos² = C/2


def test_embedding_pca_and_nearest(server, run_dir):
    model, tokenizer, _ = load_run(run_dir, "cpu")
    E = model.token_embedding.weight.detach().numpy().astype(np.float64)
    d = httpx.get(server[0] + "/api/embeddings/pca", timeout=30).json()
    centred = E - E.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:2].T
    xy = np.array(d["xy"])
    for axis in range(2):  # a principal axis is defined up to its sign
        assert min(np.abs(xy[:, axis] - reference[:, axis]).max(), np.abs(xy[:, axis] + reference[:, axis]).max()) < 1e-4
    n = httpx.get(server[0] + "/api/embeddings/nearest", params={"token": "e"}, timeout=30).json()
    unit = E / np.linalg.norm(E, axis=1, keepdims=True)
    cos = unit @ unit[tokenizer.encode("e")[0]]
    cos[tokenizer.encode("e")[0]] = -2
    assert [x["id"] for x in n["nearest"]] == list(np.argsort(-cos)[:10])
    bad = httpx.get(server[0] + "/api/embeddings/nearest", params={"token": "two"}, timeout=30)
    assert bad.status_code == 400 and "exactly one token" in bad.json()["error"]["message"]
