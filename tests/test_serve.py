"""The ASGI server under real clients on loopback: concurrent requests answered as if alone, n samples,
/v1/completions with logprobs, and robustness (bad bodies, unknown model, oversize prompts, API key, queue
overflow, disconnects mid-stream, draining on shutdown), the slots all free afterwards."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import swift_jax
from infer_fixtures import build_chat_model
from swift_jax.deploy import ChatServer, DeployArgs, make_server
from swift_jax.generation import GenerationConfig, Generator
from swift_jax.infer import encode_chat

KEY = "secret"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = build_chat_model(tmp_path_factory.mktemp("chat"), "qwen3", seed=5)
    gen = Generator(swift_jax.load_model(path), swift_jax.load_tokenizer(path))
    args = DeployArgs(model=path, served_model_name="tiny", max_new_tokens=12, max_batch_size=4, max_queue_size=2,
                      api_key=KEY, max_model_len=64)
    chat = ChatServer(gen, args)
    server = make_server(chat, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield chat, gen, url, server
    server.shutdown()
    server.server_close()


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, timeout=60, max_retries=0)


def _post(url, body=None, path="/v1/chat/completions", key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(url + path, content=raw if raw is not None else json.dumps(body), headers=headers, timeout=60)


def _all_free(chat, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if chat.engine.free_slots == chat.engine.max_num_seqs and not chat.engine.waiting:
            return True
        time.sleep(0.05)
    return False


QUESTIONS = ["What is 6 times 7?", "Name a color.", "Count to five please, one two", "Paris is the capital of"]


def test_concurrent_clients_get_what_each_gets_alone(served):
    chat, gen, url, _ = served
    client = _client(url)
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda m: client.chat.completions.create(model="tiny", messages=m, temperature=0), messages))
    cfg = GenerationConfig(max_new_tokens=12)
    for m, reply in zip(messages, replies):
        alone = Generator(gen.model, gen.tokenizer, max_batch_size=1).generate_ids([encode_chat(gen.tokenizer, m)], cfg)[0]
        assert reply.choices[0].message.content == alone.text
    samples = client.chat.completions.create(model="tiny", messages=messages[0], n=3, temperature=1.5, seed=4)
    assert sorted(c.index for c in samples.choices) == [0, 1, 2] and len({c.message.content for c in samples.choices}) > 1
    again = client.chat.completions.create(model="tiny", messages=messages[0], n=3, temperature=1.5, seed=4)
    assert [c.message.content for c in again.choices] == [c.message.content for c in samples.choices]
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert _all_free(chat)


def test_completions_with_logprobs_and_streamed_usage(served):
    chat, gen, url, _ = served
    client = _client(url)
    prompt = "one two three"
    reply = client.completions.create(model="tiny", prompt=[prompt, "Paris is"], max_tokens=5, logprobs=2, temperature=0)
    ids = gen.tokenizer.encode(prompt, add_special_tokens=False)
    alone = gen.generate_ids([ids], GenerationConfig(max_new_tokens=5, logprobs=True))[0]
    first = reply.choices[0]
    assert first.text == alone.text and len(reply.choices) == 2
    assert first.logprobs.token_logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    assert all(len(top) == 2 for top in first.logprobs.top_logprobs)
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTIONS[1]}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTIONS[1]}])
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and chunks[-1].usage.prompt_tokens > 0


def test_bad_requests_are_answered_clearly_and_serving_goes_on(served):
    chat, _, url, _ = served
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (dict(raw=b"{not json"), 400, "not valid JSON"),
        (dict(raw=b"[1, 2]"), 400, "JSON object"),
        (dict(body={**ok, "max_tokens": "ten"}), 400, "'max_tokens' must be an integer"),
        (dict(body={**ok, "top_p": 0}), 400, "top_p"),
        (dict(body={**ok, "messages": "hi"}), 400, "'messages' must be a non-empty list"),
        (dict(body={**ok, "stream": "yes"}), 400, "'stream' must be true or false"),
        (dict(body={**ok, "messages": [{"role": "user", "content": "seven " * 80}]}), 400, "max_model_len"),
        (dict(body={**ok, "model": "nope"}), 404, "unknown model 'nope'"),
        (dict(body=ok, key="wrong"), 401, "API key"),
        (dict(body={"prompt": [], "model": "tiny"}, path="/v1/completions"), 400, "'prompt' must be"),
    ]
    for kw, status, message in cases:
        response = _post(url, **kw)
        assert response.status_code == status, (kw, response.text)
        assert message in response.json()["error"]["message"], (kw, response.text)
    assert _post(url, ok).status_code == 200
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert _all_free(chat)


def test_queue_overflow_is_503_and_disconnects_free_slots(served):
    chat, _, url, _ = served
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    results = []
    with chat.engine._drive:  # the engine is stuck: requests wait in the queue
        threads = [threading.Thread(target=lambda: results.append(_post(url, body))) for _ in range(4 + 2)]
        for t in threads:
            t.start()
        while len(chat.engine.waiting) < 4 + 2:  # as many as the slots, and the queue's 2
            time.sleep(0.02)
        full = _post(url, body)
        assert full.status_code == 503 and "max_queue_size 2" in full.json()["error"]["message"]
        assert full.headers["retry-after"] == "1"
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 6
    stream = {**body, "stream": True, "max_tokens": 40}
    headers = {"Authorization": f"Bearer {KEY}"}
    with chat.engine._drive:
        with httpx.stream("POST", url + "/v1/chat/completions", json=stream, headers=headers, timeout=60) as response:
            next(response.iter_lines())  # the first chunk, then the client goes away
        while not chat.engine.waiting:
            time.sleep(0.02)
        request = chat.engine.waiting[0]
    assert _all_free(chat) and request.samples[0].finish_reason == "cancelled"


def test_shutdown_drains_requests_in_flight(tmp_path):
    path = build_chat_model(tmp_path, "qwen2", seed=1)
    gen = Generator(swift_jax.load_model(path), swift_jax.load_tokenizer(path))
    chat = ChatServer(gen, DeployArgs(model=path, served_model_name="tiny", max_new_tokens=6, max_model_len=64))
    server = make_server(chat, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    results = []
    with chat.engine._drive:
        worker = threading.Thread(target=lambda: results.append(_post(url, {"messages": [{"role": "user", "content": "hi"}]}, key="-")))
        worker.start()
        while not chat.engine.waiting and not results:
            time.sleep(0.02)
        assert not results, results[0].text
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()  # as SIGTERM does: stop accepting, finish what is in flight
        time.sleep(0.3)
    stopper.join(30)
    worker.join(30)
    server.server_close()
    assert not stopper.is_alive() and results[0].status_code == 200
    assert results[0].json()["usage"]["completion_tokens"] > 0
