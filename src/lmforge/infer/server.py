"""An OpenAI-compatible HTTP server over the continuous-batching engine (FastAPI + uvicorn).

    GET  /                      a chat page (streams replies, keeps the conversation)
    GET  /v1/models             the one model served
    POST /v1/completions        text completion (`prompt`), streamed as server-sent events or whole
    POST /v1/chat/completions   chat (`messages`, rendered with the run's chat template)
    GET  /health                200 while serving, 503 once shutting down
    GET  /metrics               Prometheus: requests, queue depth, running sequences, tokens/s,
                                time to first token

Requests are the OpenAI API's; the `openai` Python client works unchanged. A field OpenAI does not
define is refused (400, "Unrecognized request argument"), as OpenAI refuses it; a field it defines
that this server cannot honour (tools, logit_bias, response_format other than text, ...) is
refused too, naming the field, rather than silently ignored; `user`, `metadata`, `store` and
`service_tier` are accepted and ignored. Every error has OpenAI's envelope, `{"error": {"message",
"type", "param", "code"}}`, with its status: 400 bad request (malformed JSON, invalid UTF-8, wrong
types, values out of range, a prompt longer than the context), 404 unknown model or path, 413 a
body over the limit, 429 a full queue, 503 shutting down. A failed request never takes the server
or the other requests down.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from lmforge import chat_template as templates
from lmforge.errors import LmforgeError
from lmforge.infer.engine import Closed, Engine, Event, QueueFull, SamplingParams

# Accepted for compatibility and ignored: they change nothing about the text.
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier")


class APIError(Exception):
    """An error response in OpenAI's envelope."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------------
# Requests


class _Request(BaseModel):
    """The fields both endpoints share, as OpenAI defines them."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, refusal, ...: carried, unused
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


def _unsupported(req: _Request) -> None:
    """Refuse the OpenAI fields this server cannot honour, naming them."""
    checks: list[tuple[str, bool]] = [("logit_bias", bool(req.logit_bias))]
    if isinstance(req, CompletionRequest):
        checks += [("suffix", req.suffix is not None), ("best_of", req.best_of not in (None, 1))]
    if isinstance(req, ChatRequest):
        fmt = (req.response_format or {}).get("type", "text")
        checks += [("tools", bool(req.tools)), ("tool_choice", req.tool_choice not in (None, "none")),
                   ("response_format", fmt != "text")]  # fmt: skip
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    for name, given in checks:
        if given:
            raise APIError(
                400, f"{name} is not supported by this server", param=name, code="unsupported_parameter"
            )


# ----------------------------------------------------------------------------------------------
# The app


@dataclass
class ServedModel:
    """What the server needs of a model: the engine that runs it, its tokenizer and chat template."""

    name: str
    engine: Engine
    tokenizer: Any
    chat_template: str | None
    max_tokens: int  # the most tokens a request may ask for
    created: int


class Metrics:
    """The Prometheus figures, in a registry of the app's own (two servers in one process, as the
    tests start, must not share counters)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmforge_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.queue = Gauge("lmforge_queue_depth", "sequences waiting for a slot", registry=self.registry)
        self.running = Gauge("lmforge_running_sequences", "sequences being decoded", registry=self.registry)
        self.tokens = Counter("lmforge_generated_tokens", "tokens generated", registry=self.registry)
        self.rate = Gauge(
            "lmforge_tokens_per_second", "tokens generated per second, last 5 s", registry=self.registry
        )
        self.ttft = Histogram(
            "lmforge_time_to_first_token_seconds", "from submission to the first token", registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self._window: list[tuple[float, int]] = []

    def step(self, tokens: int, queue: int, running: int) -> None:
        """Called by the engine after each decode step."""
        now = time.monotonic()
        self.tokens.inc(tokens)
        self.queue.set(queue)
        self.running.set(running)
        self._window = [(t, n) for t, n in self._window if now - t < 5.0] + [(now, tokens)]
        span = now - self._window[0][0]
        self.rate.set(sum(n for _, n in self._window) / span if span > 0 else 0.0)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)


def _page() -> str:
    return resources.files("lmforge.infer").joinpath("static/chat.html").read_text(encoding="utf-8")


def create_app(served: ServedModel, *, max_body_bytes: int = 8 << 20, metrics: Metrics | None = None) -> Any:
    """The FastAPI app serving `served` (see the module docstring)."""
    app = FastAPI(title="lmforge", version="1", docs_url="/docs", redoc_url=None)
    metrics = metrics or getattr(served.engine, "metrics", None) or Metrics()

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_error(e.errors()).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"no such path {request.url.path}" if e.status_code == 404 else str(e.detail)
        if e.status_code == 400 and "parsing the body" in message:  # bytes that are not UTF-8 JSON
            message = "the body is not valid JSON (it must be UTF-8 encoded JSON text)"
        return JSONResponse(APIError(e.status_code, message, type=kind).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _page().replace("{{MODEL}}", served.name)

    @app.get("/health")
    async def health() -> JSONResponse:
        if served.engine.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": served.name})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue.set(served.engine.queue_depth)
        metrics.running.set(served.engine.running)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(served)]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        _check_model(served, name)
        return _model_card(served)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        _check_model(served, req.model)
        _unsupported(req)
        prompts = _completion_prompts(served, req.prompt)
        if len(prompts) * req.n > 16:
            raise APIError(400, "at most 16 completions per request (prompts x n)", param="n")
        params = _params(served, req, req.max_tokens or 16, req.logprobs)
        return await _Run(served, "text_completion", "cmpl", req, params, prompts).respond(request)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Any:
        _check_model(served, req.model)
        _unsupported(req)
        if not served.chat_template:
            raise APIError(400, "this model has no chat template; serve a chat run, or start the server with "
                                "--chat_template plain (or a FILE.jinja)", param="messages")  # fmt: skip
        prompt = _chat_prompt(served, req.messages)
        limit = req.max_completion_tokens or req.max_tokens
        if len(prompt) >= served.engine.max_len:
            raise APIError(400, f"the conversation is {len(prompt)} tokens with the chat template, but this model's "
                                f"context is {served.engine.max_len}; send fewer or shorter messages",
                           param="messages", code="context_length_exceeded")  # fmt: skip
        default = min(served.max_tokens, served.engine.max_len - len(prompt))
        params = _params(
            served, req, limit or max(default, 1), req.top_logprobs or 0 if req.logprobs else None
        )
        return await _Run(served, "chat.completion", "chatcmpl", req, params, [prompt]).respond(request)

    return _BodyLimit(app, max_body_bytes)


def _model_card(served: ServedModel) -> dict[str, Any]:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "lmforge"}


def _check_model(served: ServedModel, name: str) -> None:
    if name != served.name:
        raise APIError(404, f"The model '{name}' does not exist; this server serves '{served.name}'",
                       param="model", code="model_not_found")  # fmt: skip


def _validation_error(errors: list[dict[str, Any]]) -> APIError:
    """A 400 for the first problem pydantic found, naming the field like OpenAI does."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {'.'.join(loc)}", param=".".join(loc) or None
        )
    if kind == "json_invalid":
        return APIError(
            400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        )
    if kind == "missing" and not loc:
        return APIError(400, "the body must be a JSON object")
    param = ".".join(loc) or None
    return APIError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}", param=param)


def _completion_prompts(served: ServedModel, prompt: Any) -> list[list[int]]:
    """The token ids of each prompt of a completion request (text, ids, or lists of either)."""
    items = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]
    out = []
    for item in items:
        if isinstance(item, str):
            ids = served.tokenizer.encode(item) or (
                [served.tokenizer.eos_id] if served.tokenizer.eos_id is not None else []
            )
        else:
            ids = list(item)
            vocab = served.engine.model.config.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        out.append(ids)
    return out


def _chat_prompt(served: ServedModel, messages: list[Message]) -> list[int]:
    plain = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if role != "assistant" and not m.text().strip():
            raise APIError(400, f"messages.{i}.content is empty", param=f"messages.{i}.content")
        plain.append({"role": role, "content": m.text()})
    try:
        return templates.encode_chat(
            served.tokenizer, plain, served.chat_template or "", add_generation_prompt=True
        ).ids
    except LmforgeError as e:
        raise APIError(400, str(e), param="messages") from None


def _params(served: ServedModel, req: _Request, max_tokens: int, logprobs: int | None) -> SamplingParams:
    if max_tokens > served.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}, above this server's limit of {served.max_tokens}",
                       param="max_tokens")  # fmt: skip
    return SamplingParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, stop=list(req.stop or []),
        seed=req.seed, presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        logprobs=logprobs,
    )  # fmt: skip


class _Run:
    """One request's sequences on the engine, turned into OpenAI response objects."""

    def __init__(self, served: ServedModel, kind: str, prefix: str, req: _Request, params: SamplingParams,
                 prompts: list[list[int]]) -> None:  # fmt: skip
        self.served, self.kind, self.req, self.params, self.prompts = served, kind, req, params, prompts
        self.chat = kind == "chat.completion"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.tickets: list[Any] = []

    def _submit(self) -> None:
        loop = asyncio.get_running_loop()
        for p, prompt in enumerate(self.prompts):

            def deliver(event: Event, p: int = p) -> None:
                loop.call_soon_threadsafe(self.queue.put_nowait, (p, event))

            try:
                self.tickets.append(self.served.engine.submit(prompt, self.params, deliver, n=self.req.n))
            except QueueFull as e:
                self.cancel()
                raise APIError(429, str(e), type="rate_limit_error", code="queue_full") from None
            except Closed as e:
                self.cancel()
                raise APIError(503, str(e), type="server_error", code="shutting_down") from None
            except LmforgeError as e:
                self.cancel()
                message = str(e)
                prompt_param = "messages" if self.chat else "prompt"
                param = (
                    prompt_param
                    if "prompt alone" in message
                    else "max_tokens"
                    if "max_tokens" in message
                    else "n"
                )
                code = "context_length_exceeded" if "context" in message else None
                raise APIError(400, message, param=param, code=code) from None

    def cancel(self) -> None:
        for t in self.tickets:
            t.cancel()

    async def respond(self, request: Any) -> Any:
        """Submit (a refusal is still an error status, before any byte of a stream is sent), then
        the whole response or its stream of events."""
        self._submit()
        if self.req.stream:
            return StreamingResponse(self.stream(request), media_type="text/event-stream")
        return await self.whole(request)

    def _choice(self, p: int, event: Event) -> int:
        return p * self.req.n + event.index

    async def _events(self, request: Any) -> AsyncIterator[tuple[int, Event]]:
        """Every event of every sequence until all have finished; the client leaving cancels them."""
        total, done = len(self.prompts) * self.req.n, 0
        checked = time.monotonic()
        while done < total:
            try:
                p, event = await asyncio.wait_for(self.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                event = None
            if event is None or time.monotonic() - checked >= 1.0:  # at least once a second, busy or not
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel()
                    return
            if event is None:
                continue
            if event.finish_reason and event.finish_reason.startswith("error"):
                self.cancel()
                raise APIError(500, f"generation failed: {event.finish_reason[7:]}", type="server_error")
            done += bool(event.finish_reason)
            yield p, event

    def usage(self) -> dict[str, int]:
        prompt = sum(t.prompt_tokens for t in self.tickets)
        completion = sum(t.completion_tokens for t in self.tickets)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def whole(self, request: Any) -> dict[str, Any]:
        n = len(self.prompts) * self.req.n
        texts, reasons = [""] * n, [None] * n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        try:
            async for p, event in self._events(request):
                c = self._choice(p, event)
                texts[c] += event.text
                logprobs[c] += event.logprobs or []
                reasons[c] = event.finish_reason or reasons[c]
        finally:
            self.cancel()
        choices = []
        for c in range(n):
            choice: dict[str, Any] = {"index": c, "finish_reason": reasons[c] or "stop"}
            lp = self._logprobs(logprobs[c]) if self.params.logprobs is not None else None
            if self.chat:
                choice |= {"message": {"role": "assistant", "content": texts[c]}, "logprobs": lp}
            else:
                echo = self.served.tokenizer.decode(self.prompts[c // self.req.n]) if self.req.echo else ""
                choice |= {"text": echo + texts[c], "logprobs": lp}
            choices.append(choice)
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.served.name,
                "choices": choices, "usage": self.usage()}  # fmt: skip

    async def stream(self, request: Any) -> AsyncIterator[bytes]:
        """Server-sent events: `data: {chunk}` per piece of text, then `data: [DONE]`."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        base = {"id": self.id, "object": kind, "created": self.created, "model": self.served.name}
        try:
            if self.chat:
                for c in range(len(self.prompts) * self.req.n):
                    delta = {"role": "assistant", "content": ""}
                    yield _sse(
                        {
                            **base,
                            "choices": [
                                {"index": c, "delta": delta, "logprobs": None, "finish_reason": None}
                            ],
                        }
                    )
            async for p, event in self._events(request):
                c = self._choice(p, event)
                lp = self._logprobs(event.logprobs or []) if self.params.logprobs is not None else None
                if self.chat:
                    choice = {"index": c, "delta": {"content": event.text} if event.text else {}, "logprobs": lp,
                              "finish_reason": event.finish_reason}  # fmt: skip
                else:
                    choice = {
                        "index": c,
                        "text": event.text,
                        "logprobs": lp,
                        "finish_reason": event.finish_reason,
                    }
                yield _sse({**base, "choices": [choice]})
            if (self.req.stream_options or {}).get("include_usage"):
                yield _sse({**base, "choices": [], "usage": self.usage()})
            yield b"data: [DONE]\n\n"
        except APIError as e:
            yield _sse(e.body())
            yield b"data: [DONE]\n\n"
        finally:
            self.cancel()

    def _logprobs(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """OpenAI's logprobs object: chat's `content` list, or completions' parallel lists."""
        if self.chat:
            return {"content": [
                {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode("utf-8")),
                 "top_logprobs": [{"token": t["token"], "logprob": t["logprob"],
                                   "bytes": list(t["token"].encode("utf-8"))} for t in e["top_logprobs"]]}
                for e in entries
            ]}  # fmt: skip
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": list(itertools.accumulate((len(e["token"]) for e in entries[:-1]), initial=0))
            if entries
            else [],
        }


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413 before any of it is parsed,
    by its Content-Length, or for a chunked body by reading it up to the limit first (then handed
    on whole)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def __getattr__(self, name: str) -> Any:  # openapi(), routes, state: the wrapped app's
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                return await self._too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = [], True
        seen = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body.append(message.get("body", b""))
            seen += len(body[-1])
            more = message.get("more_body", False)
            if seen > self.limit:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        mb = self.limit / (1 << 20)
        err = APIError(
            413, f"the request body is larger than this server's limit of {mb:g} MB", code="body_too_large"
        )
        await JSONResponse(err.body(), status_code=413, headers={"connection": "close"})(scope, receive, send)


def serve(
    model: Any, tokenizer: Any, *, name: str = "lmforge", host: str = "127.0.0.1", port: int = 8000,
    chat_template: str | None = None, max_batch: int = 16, max_queue: int = 64, max_tokens: int = 512,
    max_body_mb: float = 8.0, drain_seconds: float = 30.0, ready: Any = None,
) -> None:  # fmt: skip
    """Serve `model` until SIGINT/SIGTERM. On either, the server stops accepting connections and
    new requests (503), lets the requests in flight finish (at most `drain_seconds`), then exits.
    `ready(port)` is called once it listens (port 0 picks a free one)."""
    import uvicorn

    metrics = Metrics()
    template = chat_template or getattr(tokenizer, "chat_template", None)
    ends = templates.turn_end_ids(tokenizer, template) if template else None
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, end_ids=ends, metrics=metrics)
    served = ServedModel(name, engine, tokenizer, template, max_tokens, int(time.time()))
    app = create_app(served, max_body_bytes=int(max_body_mb * (1 << 20)), metrics=metrics)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_seconds
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            engine.stop_accepting()  # new requests get 503 while the ones in flight finish
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if ready is not None and self.servers:
                ready(self.servers[0].sockets[0].getsockname()[1])

    try:
        Server(config).run()
    finally:
        engine.close(drain=False, timeout=5)


__all__ = ["APIError", "Metrics", "ServedModel", "create_app", "serve"]
