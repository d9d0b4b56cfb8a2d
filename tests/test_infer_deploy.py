"""swift_jax.deploy: the OpenAI-compatible server, driven by the real `openai` client on loopback."""

import threading

import openai
import pytest

import swift_jax
from infer_fixtures import build_chat_model
from swift_jax.deploy import ChatServer, DeployArgs, make_server
from swift_jax.generation import GenerationConfig, Generator
from swift_jax.infer import encode_chat


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = build_chat_model(tmp_path_factory.mktemp("chat"), "qwen3", seed=3)
    gen = Generator(swift_jax.load_model(path), swift_jax.load_tokenizer(path), max_batch_size=1)
    server = make_server(ChatServer(gen, DeployArgs(model=path, served_model_name="tiny", max_new_tokens=10)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="-", timeout=60, max_retries=0)
    yield client, gen
    server.shutdown()
    server.server_close()


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6 times 7?"}]


def test_chat_completion_equals_generator(served):
    client, gen = served
    expected = gen.generate_ids([encode_chat(gen.tokenizer, MESSAGES)], GenerationConfig(max_new_tokens=10))[0]
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.completion_tokens == len(expected.token_ids)
    short = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
    assert short.usage.completion_tokens <= 3 and expected.text.startswith(short.choices[0].message.content.rstrip("\ufffd"))


def test_streaming_chunks_concatenate_to_the_reply(served):
    client, gen = served
    expected = gen.generate_ids([encode_chat(gen.tokenizer, MESSAGES)], GenerationConfig(max_new_tokens=10))[0]
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    assert len(chunks) >= 3


def test_bad_requests_get_400(served):
    client, _ = served
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a number"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature="hot")
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])
