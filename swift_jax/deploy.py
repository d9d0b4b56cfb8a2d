"""`python -m swift_jax.deploy`: an OpenAI-compatible HTTP server on top of `swift_jax.generation`.

    python -m swift_jax.deploy --model Qwen/Qwen2.5-0.5B-Instruct --port 8000
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").chat.completions.create(...)

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (with `stream: true` as server-sent events).
Requests run one at a time (the standard library's threading server; generation holds a lock). Prompts are
rendered as training renders rows (`--template`, `--system`, or what the checkpoint was trained with); generation
stops at the tokenizer's eos and the template's stop words. Request fields: `messages`, `tools`,
`chat_template_kwargs` (e.g. `{"enable_thinking": false}`), `max_tokens` / `max_completion_tokens`,
`temperature`, `top_p`, `seed`, `stop`, `stream`, and the extras `top_k`, `repetition_penalty`; missing ones take
the server's `--` defaults.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

from swift_jax.arguments import GenerationArgs
from swift_jax.generation import GenerationConfig, Generator
from swift_jax.data.errors import DataError
from swift_jax.data.frontend import prompt_of
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.data.media import content_parts
from swift_jax.data.vision import prompt_inputs, vision_for_inference
from swift_jax.infer import InferArgs, load_for_inference


@dataclasses.dataclass
class DeployArgs(InferArgs):
    """Arguments of `swift_jax.deploy`: the inference arguments (server defaults) plus the address."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on (0: a free one)."""
    served_model_name: str | None = None
    """The `model` name clients use; default: --model."""


class RequestError(ValueError):
    """A client mistake, answered with HTTP 400 and an OpenAI-style error body."""


def _config(body: dict[str, Any], args: DeployArgs, gen: Generator, encoder) -> GenerationConfig:
    """Generation settings of one request, falling back to the server's arguments; generation also stops at the
    template's stop words, as for infer."""
    if body.get("n", 1) != 1:
        raise RequestError(f"n={body['n']} is not supported; only n=1")
    stop = body.get("stop") or args.stop_words
    request = GenerationArgs(
        max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or args.max_new_tokens),
        temperature=float(body.get("temperature", args.temperature) or 0.0),
        top_k=int(body.get("top_k", args.top_k) or 0),
        top_p=float(body.get("top_p", args.top_p) or 1.0),
        repetition_penalty=float(body.get("repetition_penalty", args.repetition_penalty) or 1.0),
        seed=int(body.get("seed", args.seed) or 0),
        stop_words=[stop] if isinstance(stop, str) else list(stop),
    )
    return request.generation_config(gen, encoder)


def _prompt(body: dict[str, Any], encoder, vision=None):
    """Prompt ids of a request's `messages` (and `tools`), normalised and rendered as training renders rows;
    with a vision-language model (`vision`), `image_url` / `video_url` parts (local paths, data URLs)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {'role', 'content'} objects")
    if vision is not None:
        try:
            messages, media = content_parts(messages)
            request = {"messages": messages, "tools": body.get("tools"), "chat_template_kwargs": body.get("chat_template_kwargs")}
            prompt = prompt_of(request, where="request", media=True)
            if prompt.reference is not None:
                prompt.messages.append({"role": "assistant", "content": prompt.reference})
            return prompt_inputs(vision, encoder, prompt.messages, prompt.tools, media, "request", prompt.chat_template_kwargs)
        except DataError as err:
            raise RequestError(str(err)) from None
    flat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only (this server runs text models)
            kinds = sorted({p.get("type") for p in content if isinstance(p, dict) and p.get("type") != "text"})
            if kinds:
                raise RequestError(f"messages[{i}] has {kinds} content parts; this model reads text only")
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        flat.append({**m, "content": content})
    try:
        request = {"messages": flat, "tools": body.get("tools"), "chat_template_kwargs": body.get("chat_template_kwargs")}
        prompt = prompt_of(request, where="request")
        if prompt.reference is not None:  # a request may end with an assistant message: it is history here
            prompt.messages.append({"role": "assistant", "content": prompt.reference})
        return encoder.prompt_ids(prompt.messages, prompt.tools, prompt.chat_template_kwargs)
    except DataError as err:
        raise RequestError(str(err)) from None


class ChatServer:
    """Holds the generator and turns OpenAI chat requests into generation calls."""

    def __init__(self, gen: Generator, args: DeployArgs, vision=None):
        self.gen, self.args, self.vision = gen, args, vision
        self.encoder = args.chat_encoder(gen.tokenizer)
        self.name = args.served_model_name or args.model or (args.adapters[0] if args.adapters else "swift_jax")
        self.lock = threading.Lock()

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "swift_jax"}]}

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A `chat.completion` object for a non-streaming request."""
        prompt, config = _prompt(body, self.encoder, self.vision), _config(body, self.args, self.gen, self.encoder)
        with self.lock:
            out = self.gen.generate_ids([prompt], config)[0]
        return {
            **self._head("chat.completion"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}
            ],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(out.token_ids),
                "total_tokens": len(prompt) + len(out.token_ids),
            },
        }

    def stream(self, body: dict[str, Any]):
        """`chat.completion.chunk` objects for a streaming request (validated before the first one)."""
        prompt, config = _prompt(body, self.encoder, self.vision), _config(body, self.args, self.gen, self.encoder)
        head = self._head("chat.completion.chunk")

        def chunks():
            with self.lock:
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                pieces = self.gen.stream(prompt, config)
                while True:
                    try:
                        piece = next(pieces)
                    except StopIteration as finished:
                        reason = finished.value.finish_reason
                        break
                    yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}

        return chunks()

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": self.name}


def make_server(chat: ChatServer, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server bound to (host, port) (port 0 picks a free one) that answers with `chat`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):  # keep the console for the server's own messages
            pass

        def _json(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._json(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, chat.models())
            else:
                self._error(404, f"unknown path {self.path}; expected /v1/models or /v1/chat/completions")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"unknown path {self.path}; expected /v1/chat/completions")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not isinstance(body, dict):
                    raise RequestError("the request body must be a JSON object")
                if not body.get("stream"):
                    return self._json(200, chat.complete(body))
                chunks = chat.stream(body)
            except (RequestError, json.JSONDecodeError, TypeError, ValueError) as err:
                return self._error(400, str(err))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_config(DeployArgs, argv, aliases=ALIASES, command="deploy")
    model, tokenizer = load_for_inference(args.model, args.adapters, args.dtype, args.adjust_config(), args.new_special_tokens)
    vision, args = vision_for_inference(args, model.config)
    chat = ChatServer(Generator(model, tokenizer, max_batch_size=1), args, vision)
    server = make_server(chat, args.host, args.port)
    print(f"[INFO] serving {chat.name} at http://{args.host}:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
