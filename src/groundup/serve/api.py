"""The OpenAI-compatible HTTP API (FastAPI) and the endpoints behind the web page.

  GET  /health                    liveness and queue figures
  GET  /v1/models                 the one model this server holds (named after its run directory)
  POST /v1/completions            text → continuation        (stream: server-sent events)
  POST /v1/chat/completions       messages → reply, through CHAT_TEMPLATE (the model is no assistant)
  POST /api/tokenize              text → ids and their pieces
  POST /api/inspect               ids → per position: top-10 next tokens, attention of every layer/head
  GET  /api/positions             the sinusoid table and PE(p)·PE(q) against p − q
  GET  /api/embeddings/pca        2-D PCA of the token embeddings
  GET  /api/embeddings/nearest    nearest tokens by cosine similarity
  GET  /                          the web page (static files shipped in the package)

Every bad request answers an OpenAI-shaped error, {"error": {"message", "type", "param", "code"}},
with 400, 401, 404, 413, 422 or 429, never a 500 or a dropped connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from groundup.errors import GroundupError
from groundup.sample import SamplingSettings, prompt_ids
from groundup.serve import inspect
from groundup.serve.engine import Job, QueueFull, Scheduler, TokenOut, next_id

STATIC = Path(__file__).parent / "static"

# Chat messages become one text the model continues (documented in docs/serve.md):
#   SYSTEM:\n{content}\n\nUSER:\n{content}\n\nASSISTANT:\n
# and the reply stops at the first blank line (the end of a speech in a play), as well as at the
# request's own stop strings.
CHAT_ROLES = {"system": "SYSTEM", "user": "USER", "assistant": "ASSISTANT"}
CHAT_STOP = "\n\n"
MIN_TEMPERATURE = 1e-3


def render_chat(messages: list["ChatMessage"]) -> str:
    return "".join(f"{CHAT_ROLES[m.role]}:\n{m.content}\n\n" for m in messages) + "ASSISTANT:\n"


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000  # request body → 413
    max_prompt_tokens: int | None = None  # None: the model's context; longer prompts → 400
    max_tokens: int | None = None  # None: whatever is left of the context
    max_top_logprobs: int = 20
    request_timeout_s: float = 300.0  # a request still waiting for its first token after this → 503


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


class Outbox:
    """Events from the scheduler thread to the event loop: collected during a decoding step and
    handed over in one call (one wake-up of the loop per step, not one per token)."""

    def __init__(self):
        self.items: list[tuple[asyncio.Queue, tuple]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def put(self, queue: asyncio.Queue, event: tuple) -> None:  # scheduler thread
        self.items.append((queue, event))

    def flush(self) -> None:  # scheduler thread, after each step
        if self.items and self.loop is not None:
            items, self.items = self.items, []
            try:
                self.loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is gone (shutdown)
                pass


def _deliver(items) -> None:
    for queue, event in items:
        queue.put_nowait(event)


# ---- request bodies (strict types: "1" is not a number, true is not 1) ------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)  # not OpenAI's, as in vLLM
    n: int = Field(default=1, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: dict | None = None
    return_token_ids: bool = False  # not OpenAI's: each choice carries `token_ids` (the web page)

    @field_validator("temperature")
    @classmethod
    def _not_vanishing(cls, t: float) -> float:
        if 0 < t < MIN_TEMPERATURE:  # logits / t would overflow to inf − inf = NaN
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return t

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
        return stops


class CompletionBody(_Body):
    prompt: str | list[int]
    logprobs: int | None = Field(default=None, ge=0)
    echo: Literal[False] = False  # not supported


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)


class InspectBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    ids: list[int] | None = None
    text: str | None = None


class TokenizeBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    text: str


# ---- the app -----------------------------------------------------------------------------------
def create_app(model, tokenizer, model_name: str, *, api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 16, max_waiting: int = 64) -> FastAPI:
    """The server's app. The scheduler thread starts here and stops at the app's shutdown."""
    limits = limits or Limits()
    block = model.config.block_size
    outbox = Outbox()
    scheduler = Scheduler(model, tokenizer, max_batch=max_batch, max_waiting=max_waiting, after_step=outbox.flush)
    inspector = inspect.Inspector(model, tokenizer)
    app = FastAPI(title="groundup", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.model_name = model_name
    app.router.add_event_handler("shutdown", scheduler.close)

    # ---- errors: every one OpenAI-shaped --------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"][1:]) or None
        return error_response(422, f"{param}: {err['msg']}", param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return error_response(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _unexpected(request, e):  # a bug, still answered in the same shape
        return error_response(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        path = request.url.path
        if api_key and (path.startswith("/v1/") or path.startswith("/api/")):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                      "invalid_request_error", code="invalid_api_key")
        return await call_next(request)

    async def read_body(request: Request, schema):
        """The JSON body, at most limits.max_body_bytes (413), parsed into `schema` (400)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise APIError(413, f"request body is {int(declared):,} bytes; the limit is {limits.max_body_bytes:,}",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise APIError(413, f"request body exceeds {limits.max_body_bytes:,} bytes", code="request_too_large")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param,
                           code="invalid_value") from None

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"model {name!r} does not exist; this server has {model_name!r}",
                           param="model", code="model_not_found")

    def encode(text: str, param: str) -> list[int]:
        try:
            return prompt_ids(tokenizer, text, allowed_special="none")  # user text never becomes a special token
        except GroundupError as e:
            raise APIError(400, str(e), param=param) from None

    def make_job(body: _Body, ids: list[int], top_logprobs: int | None, stop: list[str], emit) -> Job:
        limit = limits.max_prompt_tokens or block
        if len(ids) > min(limit, block - 1):
            raise APIError(400, f"the prompt is {len(ids)} tokens; this server takes at most {min(limit, block - 1)} "
                                f"(the model's context is {block})", param="prompt", code="context_length_exceeded")
        room = block - len(ids)
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > room:
            raise APIError(400, f"max_tokens {asked} + the prompt's {len(ids)} tokens exceed the model's context "
                                f"of {block}; ask for at most {room}", param="max_tokens", code="context_length_exceeded")
        max_new = asked or room
        if limits.max_tokens is not None:
            if asked is not None and asked > limits.max_tokens:
                raise APIError(400, f"max_tokens {asked} is above this server's limit of {limits.max_tokens}",
                               param="max_tokens")
            max_new = min(max_new, limits.max_tokens)
        if top_logprobs is not None and top_logprobs > limits.max_top_logprobs:
            raise APIError(400, f"at most {limits.max_top_logprobs} top logprobs", param="top_logprobs")
        settings = SamplingSettings(max_new, body.temperature, body.top_k, body.top_p, body.seed)
        return Job(ids, settings, emit, stop=stop, top_logprobs=top_logprobs)

    def submit(job: Job):
        """Queue a job whose events arrive on an asyncio queue of this event loop (429 when full)."""
        outbox.loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job.emit = lambda event: outbox.put(events, event)
        try:
            scheduler.submit(job)
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", code="queue_full") from None
        return job, events

    # ---- routes ------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "groundup",
                                            "context_length": block}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request, CompletionBody)
        check_model(body.model)
        if isinstance(body.prompt, list):
            if not body.prompt or any(not 0 <= i < tokenizer.vocab_size for i in body.prompt):
                raise APIError(400, f"prompt token ids must be a non-empty list of ids in 0..{tokenizer.vocab_size - 1}",
                               param="prompt")
            ids = list(body.prompt)
        else:
            ids = encode(body.prompt, "prompt")
        rid, created = next_id("cmpl"), int(time.time())
        top_n = body.logprobs

        def chunk(choice, usage=None):
            out = {"id": rid, "object": "text_completion", "created": created, "model": model_name, "choices": [choice]}
            if usage is not None:
                out["usage"] = usage
            return out

        def logprobs_of(tokens: list[TokenOut], offset: int):
            if top_n is None:
                return None
            offsets, at = [], offset
            for t in tokens:
                offsets.append(at)
                at += len(t.text)
            return {"tokens": [token_text(t) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                    "top_logprobs": [{piece(i): lp for i, lp in (t.top or [])} if top_n else None for t in tokens],
                    "text_offset": offsets}

        def choice(tokens, finish, offset):
            c = {"index": 0, "text": "".join(t.text for t in tokens), "logprobs": logprobs_of(tokens, offset),
                 "finish_reason": finish}
            if body.return_token_ids:
                c["token_ids"] = [t.token_id for t in tokens]
            return c

        job, events = submit(make_job(body, ids, top_n, body.stops(), None))
        return await respond(job, events, body, len(ids), chunk, choice, choice, prefix=None)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_body(request, ChatBody)
        check_model(body.model)
        ids = encode(render_chat(body.messages), "messages")
        rid, created = next_id("chatcmpl"), int(time.time())
        top_n = (body.top_logprobs or 0) if body.logprobs else None

        def chunk(choice, usage=None, obj="chat.completion.chunk"):
            out = {"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice]}
            if usage is not None:
                out["usage"] = usage
            return out

        def logprobs_of(tokens: list[TokenOut]):
            if top_n is None:
                return None
            return {"content": [{"token": token_text(t), "logprob": t.logprob, "bytes": list(tokenizer.token_bytes(t.token_id)),
                                 "top_logprobs": [{"token": piece(i), "logprob": lp, "bytes": list(tokenizer.token_bytes(i))}
                                                  for i, lp in (t.top or [])]} for t in tokens]}

        def full(tokens, finish, offset):
            c = {"index": 0, "message": {"role": "assistant", "content": "".join(t.text for t in tokens)},
                 "logprobs": logprobs_of(tokens), "finish_reason": finish}
            if body.return_token_ids:
                c["token_ids"] = [t.token_id for t in tokens]
            return c

        def delta(tokens, finish, offset):
            d = {"content": "".join(t.text for t in tokens)} if tokens else {}
            c = {"index": 0, "delta": d, "logprobs": logprobs_of(tokens) if tokens else None, "finish_reason": finish}
            if body.return_token_ids:
                c["token_ids"] = [t.token_id for t in tokens]
            return c

        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        job, events = submit(make_job(body, ids, top_n, [CHAT_STOP, *body.stops()], None))
        return await respond(job, events, body, len(ids),
                             lambda c, usage=None: chunk(c, usage, obj="chat.completion") if "message" in c else chunk(c, usage),
                             full, delta, prefix=first)

    def token_text(t: TokenOut) -> str:
        return tokenizer.token_bytes(t.token_id).decode("utf-8", errors="replace")

    def piece(i: int) -> str:
        return tokenizer.token_bytes(i).decode("utf-8", errors="replace")

    async def respond(job, events, body, n_prompt, chunk, full_choice, delta_choice, prefix):
        """One JSON answer, or server-sent events: `data: {chunk}` per token, then `data: [DONE]`."""

        def usage(n):
            return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}

        if not body.stream:
            tokens, finish = [], None
            try:
                while finish is None:
                    kind, value = await asyncio.wait_for(events.get(), limits.request_timeout_s)
                    if kind == "token":
                        tokens.append(value)
                    elif kind == "error":
                        return error_response(503, value, "server_error")
                    else:
                        finish = value
            except asyncio.TimeoutError:
                job.cancelled = True
                return error_response(503, "generation timed out", "server_error")
            except asyncio.CancelledError:
                job.cancelled = True  # the client went away: free the slot
                raise
            return JSONResponse(chunk(full_choice(tokens, finish, 0), usage(len(tokens))))

        include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))

        async def sse():
            n, offset = 0, 0
            try:
                if prefix is not None:
                    yield f"data: {json.dumps(chunk(prefix))}\n\n"
                while True:
                    kind, value = await asyncio.wait_for(events.get(), limits.request_timeout_s)
                    if kind == "token":
                        n += 1
                        yield f"data: {json.dumps(chunk(delta_choice([value], None, offset)))}\n\n"
                        offset += len(value.text)
                    elif kind == "error":
                        yield f"data: {json.dumps({'error': {'message': value, 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
                        break
                    else:
                        yield f"data: {json.dumps(chunk(delta_choice([], value, offset)))}\n\n"
                        if include_usage:
                            yield f"data: {json.dumps({**chunk(None), 'choices': [], 'usage': usage(n)})}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:  # the client disconnected (or we are done): free the slot either way
                job.cancelled = True

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---- the web page's endpoints --------------------------------------------------------------
    @app.post("/api/tokenize")
    async def tokenize(request: Request):
        body = await read_body(request, TokenizeBody)
        ids = encode(body.text, "text")
        return {"ids": ids, "pieces": [piece(i) for i in ids]}

    @app.post("/api/inspect")
    async def inspect_ids(request: Request):
        body = await read_body(request, InspectBody)
        ids = body.ids if body.ids is not None else encode(body.text or "", "text")
        if not ids or len(ids) > block or any(not 0 <= i < tokenizer.vocab_size for i in ids):
            raise APIError(400, f"ids must be 1..{block} token ids in 0..{tokenizer.vocab_size - 1}", param="ids")
        return await asyncio.to_thread(inspector.inspect, ids)

    @app.get("/api/positions")
    async def positions():
        return inspector.positions()

    @app.get("/api/embeddings/pca")
    async def pca():
        return await asyncio.to_thread(inspector.pca)

    @app.get("/api/embeddings/nearest")
    async def nearest(token: str, k: int = 10):
        try:
            return inspector.nearest(token, k)
        except GroundupError as e:
            raise APIError(400, str(e), param="token") from None

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
