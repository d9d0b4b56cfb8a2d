"""The OpenAI-compatible HTTP server on FastAPI/Starlette + uvicorn, in front of one running `Engine`.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
`stream: true` as server-sent events, usage in the last chunk). Requests from every client run together in
the engine's slots. A bad body is a 400 naming the field; an unknown `model` a 404; more waiting requests
than `--max_queue_size` a 503 with `Retry-After`; a wrong `--api_key` a 401. A client that goes away
(disconnect mid-stream, or while waiting) cancels its request, freeing its slots. On SIGTERM uvicorn stops
accepting and drains the requests in flight before the engine stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from swift_jax.engine.core import Engine, QueueFull
from swift_jax.engine.openai_api import (
    Prepared, RequestError, agent_of, chat_logprobs, chat_message, chat_prompt, completion_logprobs, completion_prompts,
    head, sampling_config, usage,
)
from swift_jax.engine.requests import Delta, Request


class OpenAIService:
    """Turns OpenAI requests into engine requests: `model` picks the adapter (`name` the base model, each key
    of `engine.variants` its LoRA adapter); absent fields take the server's generation defaults."""

    def __init__(self, engine: Engine, args, name: str, encoder, vision=None, generator=None):
        from swift_jax.data.frontend import template_stops

        self.engine, self.args, self.name, self.encoder, self.vision = engine, args, name, encoder, vision
        self.generator = generator  # prompts with images run its batch loop (the engine reads text prompts)
        self._vision_lock = threading.Lock()
        ids, words = template_stops(encoder)
        self.eos = tuple(sorted(set(engine.default_eos) | set(ids)))
        self.stop_words = tuple(args.stop_words) + tuple(w for w in words if w not in args.stop_words)
        self.agent = agent_of(encoder)

    def models(self) -> dict[str, Any]:
        names = [self.name] + sorted(n for n in self.engine.variants if n)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "swift_jax"} for n in names]}

    def adapter(self, body: dict) -> str | None:
        model = body.get("model")
        if model is None or model == self.name:
            return None
        if model in self.engine.variants:
            return model
        raise RequestError(f"unknown model {model!r}; this server serves {[m['id'] for m in self.models()['data']]}", 404, "model")

    def prepare(self, body: dict, chat: bool) -> Prepared:
        """Validate a body: its prompts, settings and adapter (RequestError names the first bad field)."""
        adapter = self.adapter(body)
        config = sampling_config(body, self.args, self.eos, self.stop_words if chat else tuple(self.args.stop_words))
        prompts = [chat_prompt(body, self.encoder, self.vision)] if chat else completion_prompts(body, self.engine.tokenizer)
        options = body.get("stream_options") or {}
        return Prepared(prompts, config, adapter, bool(body.get("stream")), bool(options.get("include_usage", True)))

    def run_blocking(self, prepared: Prepared) -> list:
        """Generate a prepared request in this thread (the engine's own thread, if running, does the steps)."""
        if self.is_vision(prepared):
            return self.generate_vision(prepared)
        requests = self.submit(prepared, None)
        self.engine.run(requests)
        return requests

    def is_vision(self, prepared: Prepared) -> bool:
        return any(getattr(p, "layout", None) is not None for p in prepared.prompts)

    def generate_vision(self, prepared: Prepared) -> list["Finished"]:
        """Prompts with images: the generator's batch loop, one request at a time."""
        with self._vision_lock:
            outputs = self.generator.generate_ids(prepared.prompts, prepared.config)
        return [Finished(p, [o]) for p, o in zip(prepared.prompts, outputs)]

    def submit(self, prepared: Prepared, on_event, on_finish=None) -> list[Request]:
        """Queue every prompt (`on_event((prompt index, Delta))` while streaming, `on_finish()` as each ends); on
        a refusal the ones already queued are cancelled."""
        requests = []
        try:
            for i, p in enumerate(prepared.prompts):
                listen = None if on_event is None else (lambda d, i=i: on_event((i, d)))
                requests.append(self.engine.submit(p, prepared.config, adapter=prepared.adapter, on_event=listen,
                                                   on_finish=on_finish))
        except (ValueError, QueueFull) as err:
            for r in requests:
                r.cancel()
            if isinstance(err, QueueFull):
                raise
            raise RequestError(str(err), param="messages" if "prompt" in str(err) else None) from None
        return requests

    def respond(self, prepared: Prepared, requests: list[Request], chat: bool, tools: bool) -> dict[str, Any]:
        """The `chat.completion` / `text_completion` object of finished requests."""
        tok = self.engine.tokenizer
        choices, generated = [], 0
        n = prepared.config.n
        for r_index, request in enumerate(requests):
            for out in request.outputs:
                index = r_index * n + len([c for c in choices if c["index"] >= r_index * n])
                generated += len(out.token_ids)
                if chat:
                    message, reason = chat_message(out, tools, self.agent)
                    choices.append({"index": index, "message": message, "finish_reason": reason,
                                    "logprobs": chat_logprobs(tok, out.token_ids, out.logprobs, out.top_logprobs)})
                else:
                    choices.append({"index": index, "text": out.text, "finish_reason": out.finish_reason,
                                    "logprobs": completion_logprobs(tok, out.token_ids, out.logprobs, out.top_logprobs)})
        prompt_tokens = sum(len(getattr(r.prompt, "ids", r.prompt)) for r in requests)
        kind, prefix = ("chat.completion", "chatcmpl") if chat else ("text_completion", "cmpl")
        return {**head(kind, self._model(prepared), prefix), "choices": choices, "usage": usage(prompt_tokens, generated)}

    def _model(self, prepared: Prepared) -> str:
        return prepared.adapter or self.name


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 503: "server_overloaded"}
    return {"error": {"message": message, "type": kind.get(status, "server_error"), "param": param, "code": status}}


def build_app(service: OpenAIService, api_key: str | None = None):
    """The FastAPI application; its lifespan starts the engine's thread and stops it after the last request."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.engine.start()
        yield
        service.engine.stop()

    app = FastAPI(title="swift_jax", lifespan=lifespan)

    def error(status: int, message: str, param: str | None = None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)

    @app.middleware("http")
    async def check_key(request: HttpRequest, call_next):
        if api_key and request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "missing or wrong API key: send 'Authorization: Bearer <--api_key>'")
        return await call_next(request)

    @app.get("/health")
    async def health():
        e = service.engine
        return {"status": "ok", "free_slots": e.free_slots, "slots": e.max_num_seqs, "waiting": len(e.waiting)}

    @app.get("/v1/models")
    async def models():
        return service.models()

    async def handle(http: HttpRequest, chat: bool):
        try:
            body = json.loads(await http.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(400, f"the request body is not valid JSON: {err}")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
        try:
            prepared = service.prepare(body, chat)
            on_event = (lambda d: loop.call_soon_threadsafe(events.put_nowait, d)) if prepared.stream else None
            ended = asyncio.Event()
            on_finish = lambda: loop.call_soon_threadsafe(ended.set)  # noqa: E731
            requests = [] if service.is_vision(prepared) else service.submit(prepared, on_event, on_finish)
        except RequestError as err:
            return error(err.status, str(err), err.param)
        except QueueFull as err:
            return error(503, f"the server is at capacity: {err}", headers={"Retry-After": "1"})
        if service.is_vision(prepared):
            requests = await asyncio.to_thread(service.generate_vision, prepared)
            if prepared.stream:
                for i, r in enumerate(requests):
                    out = r.outputs[0]
                    events.put_nowait((i, Delta(0, out.text, out.token_ids, finish_reason=out.finish_reason)))
        if prepared.stream:
            chunks = _sse(service, prepared, requests, events, chat)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        done = await _finished(requests, http, ended)
        if not done:
            return error(499, "client closed the request")
        failed = [r.error for r in requests if r.error]
        if failed:
            return error(500, f"generation failed: {failed[0]}")
        return service.respond(prepared, requests, chat, bool(body.get("tools")))

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        return await handle(http, chat=True)

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        return await handle(http, chat=False)

    return app


@dataclasses.dataclass
class Finished:
    """A response generated outside the engine (prompts with images), shaped like a finished `Request`."""

    prompt: Any
    outputs: list
    error: str | None = None
    finished: bool = True

    def cancel(self) -> None:
        pass


async def _finished(requests: list, http, ended: asyncio.Event) -> bool:
    """Wait for `requests` (`ended` is set as each finishes); cancel them (and return False) if the client
    disconnects first."""
    while not all(r.finished for r in requests):
        ended.clear()
        if all(r.finished for r in requests):
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ended.wait(), 0.5)
        if await http.is_disconnected():
            for r in requests:
                r.cancel()
            return False
    return True


async def _sse(service: OpenAIService, prepared: Prepared, requests: list[Request], events: asyncio.Queue, chat: bool) -> AsyncIterator[str]:
    """Server-sent events of a streaming request; the last chunk carries `usage`. Leaving early (the client
    went away) cancels the requests."""
    n, tok = prepared.config.n, service.engine.tokenizer
    kind, prefix = ("chat.completion.chunk", "chatcmpl") if chat else ("text_completion", "cmpl")
    top = head(kind, service._model(prepared), prefix)
    total = len(requests) * n
    open_choices, generated = total, 0
    try:
        if chat:
            for i in range(total):
                yield _event({**top, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        while open_choices:
            position, delta = await events.get()
            index = position * n + delta.index
            generated += len(delta.token_ids)
            if chat:
                choice = {"index": index, "delta": {"content": delta.text} if delta.text or not delta.finish_reason else {},
                          "finish_reason": delta.finish_reason,
                          "logprobs": chat_logprobs(tok, delta.token_ids, delta.logprobs, delta.top_logprobs)}
            else:
                choice = {"index": index, "text": delta.text, "finish_reason": delta.finish_reason,
                          "logprobs": completion_logprobs(tok, delta.token_ids, delta.logprobs, delta.top_logprobs)}
            chunk = {**top, "choices": [choice]}
            if delta.finish_reason:
                open_choices -= 1
                if not open_choices and prepared.include_usage:
                    prompt_tokens = sum(len(getattr(r.prompt, "ids", r.prompt)) for r in requests)
                    chunk["usage"] = usage(prompt_tokens, generated)
            if delta.error:
                chunk["error"] = error_body(500, f"generation failed: {delta.error}")["error"]
            yield _event(chunk)
        yield "data: [DONE]\n\n"
    finally:
        for r in requests:
            if not r.finished:
                r.cancel()


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class RunningServer:
    """A uvicorn server on its own thread (tests, the benchmark, the chat app): `url`, `stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{port}")
            self.thread.join(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
