"""`swift-jax deploy`: an OpenAI-compatible server (FastAPI + uvicorn) on the continuous-batching engine.

    swift-jax deploy --model Qwen/Qwen2.5-0.5B-Instruct --port 8000 --max_num_seqs 32
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").chat.completions.create(...)

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (`stream: true`:
server-sent events, usage in the last chunk). Concurrent requests share the engine's slots (`swift_jax.engine`).
Prompts are rendered as training renders rows (`--template`, `--system`, or what the checkpoint was trained
with); generation stops at the tokenizer's eos and the template's stop words. Request fields: `messages` /
`prompt`, `model` (the served name, or the name of an adapter given as `--adapters name=path`), `tools`,
`chat_template_kwargs`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `top_k`, `min_p`,
`repetition_penalty`, `presence_penalty`, `frequency_penalty`, `seed`, `stop`, `stop_token_ids`, `n`,
`logprobs`, `top_logprobs`, `stream`, `stream_options`; missing ones take the server's `--` defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from typing import Any, Sequence

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.data.vision import vision_for_inference
from swift_jax.engine.openai_api import RequestError
from swift_jax.engine.server import OpenAIService, build_app
from swift_jax.generation import Generator
from swift_jax.infer import InferArgs, adapter_variants, load_for_inference, named_adapters

__all__ = ["DeployArgs", "ChatServer", "RequestError", "make_server", "main"]


@dataclasses.dataclass
class DeployArgs(InferArgs):
    """Arguments of `swift_jax.deploy`: the inference arguments (server defaults) plus the address."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on (0: a free one)."""
    served_model_name: str | None = None
    """The `model` name clients use; default: --model."""
    api_key: str | None = None
    """Clients must send `Authorization: Bearer <api_key>` (the `openai` client's `api_key`); none: open."""
    max_queue_size: int = 256
    """Requests that may wait for a slot; more are answered 503 (retry later)."""


class ChatServer(OpenAIService):
    """The deploy service of a generator's model: its engine sized by `args`, `adapters` (name -> model with
    that LoRA adapter) selectable by a request's `model`."""

    def __init__(self, gen: Generator, args: DeployArgs, vision=None, adapters: dict[str, Any] | None = None):
        engine = args.build_engine(gen.model, gen.tokenizer, max_batch_size=args.max_batch_size, adapters=adapters,
                                   max_queue_size=args.max_queue_size)
        name = args.served_model_name or args.model or (args.adapters[0] if args.adapters else "swift_jax")
        super().__init__(engine, args, name, args.chat_encoder(gen.tokenizer), vision, generator=gen)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The response object of a non-streaming chat request, generated here (no HTTP; scripts and tests)."""
        prepared = self.prepare(body, chat=True)
        requests = self.run_blocking(prepared)
        return self.respond(prepared, requests, True, bool(body.get("tools")))


class make_server:  # noqa: N801 (the name of the standard library's server factory it replaced)
    """A uvicorn server for `chat`, bound to (host, port) at once (port 0: a free one, in `server_address`);
    `serve_forever()` runs it, `shutdown()` (another thread, or SIGTERM) drains in-flight requests and stops."""

    def __init__(self, chat: OpenAIService, host: str, port: int):
        import uvicorn

        self.socket = socket.create_server((host, port), reuse_port=False)
        self.server_address = self.socket.getsockname()[:2]
        self.app = build_app(chat, chat.args.api_key)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=None))
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            if threading.current_thread() is not threading.main_thread():  # signals can only be caught on the main thread
                self.server.install_signal_handlers = lambda: None
            asyncio.run(self.server.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self.server.should_exit = True
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_config(DeployArgs, argv, aliases=ALIASES, command="deploy")
    plain, named = named_adapters(args.adapters)
    model, tokenizer = load_for_inference(args.model, plain, args.dtype, args.adjust_config(), args.new_special_tokens,
                                          tensor_parallel_size=args.resolve().tensor_parallel_size, named=list(named.values()))
    vision, args = vision_for_inference(args, model.config)
    adapters = adapter_variants(model, named)
    chat = ChatServer(Generator(model, tokenizer, max_batch_size=args.max_batch_size), args, vision, adapters)
    chat.engine.warmup()  # compile every batch shape now, not when the first requests of that size arrive
    server = make_server(chat, args.host, args.port)
    slots = chat.engine.max_num_seqs
    print(f"[INFO] serving {chat.name} at http://{args.host}:{server.server_address[1]}/v1 ({slots} slots of "
          f"{chat.engine.max_model_len} tokens, --infer_backend {args.infer_backend})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
