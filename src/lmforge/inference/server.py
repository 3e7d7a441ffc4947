"""An OpenAI-compatible HTTP server over the continuous-batching scheduler (FastAPI).

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (`stream: true` -> server-sent events in
OpenAI's chunk format, ending with `data: [DONE]`), GET /health, GET / (the web chat page). Every error is an
OpenAI-style body `{"error": {"message", "type", "param", "code"}}`; a bad request is a 4xx, never a 5xx."""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.data.templates import PromptStyle, get_prompt_style
from lmforge.errors import LmforgeError
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams
from lmforge.inference.scheduler import Event, Scheduler

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


# -- errors ---------------------------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)


# -- request bodies (unknown OpenAI fields such as user, logit_bias, presence_penalty are accepted and ignored) ----
class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off (vLLM uses -1)
    repetition_penalty: float | None = Field(None, gt=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)  # one choice per prompt
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool | None = False  # an extension (as in vLLM): generate max_tokens even past end-of-text


class CompletionBody(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatBody(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)


def _message_text(m: ChatMessage) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    for part in m.content:
        if part.type != "text":
            raise ApiError(400, f"content parts of type '{part.type}' are not supported (text only)",
                           param="messages", code="unsupported_content")
    return "".join(p.text or "" for p in m.content)


class JsonBodies:
    """Read every POST body as JSON whatever its Content-Type (as OpenAI does), so `curl -d '{...}'` works."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


# -- the app --------------------------------------------------------------------------------------------------------
def chat_style_for(cfg: Any, tokenizer: Any) -> PromptStyle:
    """The run's prompt style (`[sft] prompt_style`), else ChatML when the tokenizer knows <|im_start|>, else plain."""
    name = getattr(getattr(cfg, "sft", None), "prompt_style", "") or ""
    if name:
        return get_prompt_style(name)
    if tokenizer.token_to_id("<|im_start|>") is not None:
        return get_prompt_style("chatml")
    return get_prompt_style("plain")


def app_for_run(run: str | Path, *, device: str = "cpu", api_key: str | None = None, max_batch: int = 16,
                model_name: str | None = None) -> FastAPI:
    from lmforge.checkpoint import load_model

    lm = load_model(run, device)
    return create_app(Engine(lm.model, lm.tokenizer), model_name=model_name or lm.run_dir.resolve().name,
                      prompt_style=chat_style_for(lm.config, lm.tokenizer), api_key=api_key, max_batch=max_batch)


def create_app(engine: Engine, *, model_name: str = "lmforge", prompt_style: str | PromptStyle | None = None,
               api_key: str | None = None, max_batch: int = 16) -> FastAPI:
    style = get_prompt_style(prompt_style) if isinstance(prompt_style, str) else prompt_style
    style = style or chat_style_for(None, engine.tokenizer)
    scheduler = Scheduler(engine, max_batch=max_batch)
    tokenizer = engine.tokenizer
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="lmforge", lifespan=lifespan)
    app.add_middleware(JsonBodies)
    app.state.scheduler = scheduler
    app.state.prompt_style = style
    app.state.model_name = model_name

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        err = (e.errors() or [{}])[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return _error_response(ApiError(400, f"the request body is not valid JSON: {err.get('ctx', {}).get('error', '')}".rstrip(": "),
                                            code="invalid_json"))
        param = ".".join(loc) or None
        where = f"'{param}': " if param else ""
        return _error_response(ApiError(400, f"{where}{err.get('msg', 'invalid request')}", param=param,
                                        code="missing_required_parameter" if err.get("type") == "missing" else
                                        "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(e.status_code, str(e.detail), kind))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}", "server_error"))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def check_model(body: SamplingFields) -> None:
        if body.model and body.model != model_name:
            raise ApiError(404, f"The model '{body.model}' does not exist (this server serves '{model_name}')",
                           param="model", code="model_not_found")

    def encode(text: str, param: str) -> list[int]:
        ids = tokenizer.encode(text)
        if not ids:  # an empty prompt starts from end-of-text, as GPT-2 does
            if tokenizer.eos_id is None:
                raise ApiError(400, "the prompt is empty", param=param)
            ids = [tokenizer.eos_id]
        return ids

    def params_for(body: SamplingFields, max_tokens: int | None, prompt_len: int, extra_stop: tuple[str, ...] = ()):
        room = engine.context - prompt_len
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return SamplingParams(
            max_new_tokens=room if max_tokens is None else min(max_tokens, room),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=max(body.top_k or 0, 0), top_p=1.0 if body.top_p is None else body.top_p,
            repetition_penalty=body.repetition_penalty or 1.0, stop=list(extra_stop) + stop,
            stop_at_eos=not body.ignore_eos, seed=body.seed)

    def check_length(ids: list[int], param: str) -> None:
        if len(ids) >= engine.context:
            raise ApiError(400, f"This model's maximum context length is {engine.context} tokens; your prompt ({param}) has "
                           f"{len(ids)} tokens (it must leave room for at least one new token)",
                           param=param, code="context_length_exceeded")

    def submit_all(prompts: list[list[int]], body: SamplingFields, max_tokens: int | None,
                   extra_stop: tuple[str, ...] = ()) -> tuple[asyncio.Queue, list]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()

        def emit(ev: Event) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ev)

        reqs = []
        try:
            for i, ids in enumerate(prompts):
                reqs.append(scheduler.submit(ids, params_for(body, max_tokens, len(ids), extra_stop), emit, index=i))
        except LmforgeError as e:
            for r in reqs:
                r.cancel()
            raise ApiError(400, str(e)) from None
        return q, reqs

    async def collect(q: asyncio.Queue, reqs: list) -> list[tuple[str, str, int, int]]:
        texts: dict[int, list[str]] = {i: [] for i in range(len(reqs))}
        done: dict[int, Event] = {}
        try:
            while len(done) < len(reqs):
                ev = await q.get()
                texts[ev.index].append(ev.text)
                if ev.finish_reason is not None:
                    if ev.finish_reason == "error":
                        raise ApiError(500, f"generation failed: {ev.error}", "server_error")
                    done[ev.index] = ev
        finally:
            for r in reqs:
                r.cancel()
        return [("".join(texts[i]), done[i].finish_reason, done[i].prompt_tokens, done[i].completion_tokens)
                for i in range(len(reqs))]

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def stream_events(q: asyncio.Queue, reqs: list, chunk, include_usage: bool) -> AsyncIterator[str]:
        """chunk(index, text | None, finish_reason) -> one OpenAI chunk object (text None: the opening chunk)."""
        prompt_tokens = completion_tokens = 0
        try:
            for i in range(len(reqs)):
                opening = chunk(i, None, None)
                if opening is not None:
                    yield sse(opening)
            left = len(reqs)
            while left:
                ev = await q.get()
                if ev.finish_reason == "error":
                    yield sse(error_body(f"generation failed: {ev.error}", "server_error"))
                    return
                if ev.text:
                    yield sse(chunk(ev.index, ev.text, None))
                if ev.finish_reason is not None:
                    left -= 1
                    prompt_tokens += ev.prompt_tokens
                    completion_tokens += ev.completion_tokens
                    yield sse(chunk(ev.index, "", ev.finish_reason))
            if include_usage:
                final = chunk(0, "", None)
                final["choices"] = []
                final["usage"] = usage(prompt_tokens, completion_tokens)
                yield sse(final)
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: free the rows
            for r in reqs:
                r.cancel()

    def streaming(gen: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- routes -------------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **scheduler.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "lmforge",
                "context_length": engine.context}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(authorize)])
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionBody):
        check_model(body)
        p = body.prompt
        if isinstance(p, str):
            prompts = [encode(p, "prompt")]
        elif not p:
            raise ApiError(400, "the prompt is empty", param="prompt")
        elif all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        else:
            prompts = [encode(x, "prompt") if isinstance(x, str) else list(x) for x in p]
        vocab = engine.model.cfg.vocab_size
        for ids in prompts:
            if not ids or any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"token ids in the prompt must be in [0, {vocab})", param="prompt")
            check_length(ids, "prompt")
        q, reqs = submit_all(prompts, body, 16 if body.max_tokens is None else body.max_tokens)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(i: int, text: str | None, finish: str | None):
            if text is None:
                return None
            return {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                    "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            return streaming(stream_events(q, reqs, chunk, bool((body.stream_options or {}).get("include_usage"))))
        results = await collect(q, reqs)
        return {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": f}
                            for i, (t, f, _, _) in enumerate(results)],
                "usage": usage(sum(r[2] for r in results), sum(r[3] for r in results))}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatBody):
        check_model(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _message_text(m)}
                    for m in body.messages]
        ids = encode(style.prompt(messages), "messages")
        check_length(ids, "messages")
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        q, reqs = submit_all([ids], body, limit, style.stop)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(i: int, text: str | None, finish: str | None):
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                    "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            return streaming(stream_events(q, reqs, chunk, bool((body.stream_options or {}).get("include_usage"))))
        (text, finish, pt, ct), = await collect(q, reqs)
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish}],
                "usage": usage(pt, ct)}

    return app


class BackgroundServer:
    """Run an app with uvicorn in a thread on a free localhost port (tests, benchmarks, notebooks):
    `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread: Any = None

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.run, name="lmforge-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
