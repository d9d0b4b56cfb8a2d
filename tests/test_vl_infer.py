"""Inference with images (Qwen2-VL family): greedy generation equals transformers' `generate` (images, a
video, and a text-only prompt in one batch), `swift_jax.infer` answers image rows, and the OpenAI server takes
`image_url` content parts (data URLs; a remote URL is a clear 400)."""

import base64
import io
import json
import os

import numpy as np
import openai
import pytest
import torch
import transformers

import swift_jax
from swift_jax import infer
from swift_jax.data import DataArgs
from swift_jax.data.vision import VisionData, prompt_inputs
from swift_jax.deploy import ChatServer, DeployArgs, make_server
from swift_jax.generation import GenerationConfig, Generator
from vl_fixtures import build_vl_folder, color_image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "swift_jax", "assets", "vl_demo")
NEW = 8


def _setup(tmp_path_factory, kind):
    folder = build_vl_folder(str(tmp_path_factory.mktemp(kind)), kind, seed=1)
    model, tok = swift_jax.load_model(folder), swift_jax.load_tokenizer(folder)
    vision = VisionData.from_pretrained(folder, model.config.vision)
    return folder, Generator(model, tok, max_batch_size=4), vision, DataArgs(template=vision.template).chat_encoder(tok)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def both(request, tmp_path_factory):
    return _setup(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return _setup(tmp_path_factory, "qwen2_vl")


def _hf_greedy(hf, prompt, pixels):
    ids = torch.tensor([prompt.ids])
    types = (ids == hf.config.image_token_id) * 1 + (ids == hf.config.video_token_id) * 2
    kwargs = {k: torch.as_tensor(v) for k, v in pixels.items()}
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types, max_new_tokens=NEW,
                          do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_generation_with_images_equals_transformers(both):
    folder, gen, vision, encoder = both
    hf = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    red, wide = color_image((200, 0, 0)), color_image((0, 0, 200), (24, 40))
    requests = [
        ([{"role": "user", "content": "What colour?"}], {"image": [red], "video": []}),
        ([{"role": "user", "content": "<image> or <image>?"}], {"image": [wide, red], "video": []}),
        ([{"role": "user", "content": "Which video?"}], {"image": [], "video": [[red, wide.resize((32, 32))]]}),
        ([{"role": "user", "content": "Only text."}], {"image": [], "video": []}),
    ]
    prompts = [prompt_inputs(vision, encoder, m, media=media) for m, media in requests]
    ours = [o.token_ids for o in gen.generate_ids(prompts, GenerationConfig(max_new_tokens=NEW, eos_token_ids=()))]
    for (messages, media), prompt, got in zip(requests, prompts, ours):
        _, pixels = vision.prompt(encoder, messages, media)
        assert got == _hf_greedy(hf, prompt, pixels), messages


def test_infer_answers_image_rows(vlm, tmp_path):
    folder, gen, _, _ = vlm
    result = tmp_path / "result.jsonl"
    infer.main(["--model", folder, "--val_dataset", os.path.join(DEMO, "train.jsonl"), "--val_dataset_sample", "3",
                "--max_new_tokens", "4", "--result_path", str(result)])
    rows = [json.loads(l) for l in open(result)]
    assert len(rows) == 3 and all(r["images"] and isinstance(r["response"], str) for r in rows)


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_openai_server_takes_image_url_parts(vlm):
    folder, gen, vision, encoder = vlm
    args = DeployArgs(model=folder, served_model_name="tiny", max_new_tokens=NEW, template=vision.template)
    server = make_server(ChatServer(gen, args, vision), "127.0.0.1", 0)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="-", timeout=60, max_retries=0)
    try:
        image = color_image((0, 200, 0))
        parts = [{"type": "image_url", "image_url": {"url": _data_url(image)}}, {"type": "text", "text": "What colour?"}]
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}], temperature=0)
        prompt = prompt_inputs(vision, encoder, [{"role": "user", "content": "<image>What colour?"}],
                               media={"image": [image], "video": []})
        expected = gen.generate_ids([prompt], GenerationConfig(max_new_tokens=NEW))[0]
        assert reply.choices[0].message.content == expected.text
        assert reply.usage.prompt_tokens == len(prompt.ids)
        remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
        with pytest.raises(openai.BadRequestError, match="remote image"):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": remote}])
    finally:
        server.shutdown()
        server.server_close()


def test_eval_generation_task_with_image_rows(vlm, tmp_path):
    from swift_jax import eval as swift_eval

    folder, _, _, _ = vlm
    color_image((200, 0, 0)).save(tmp_path / "red.png")
    rows = [{"query": "What colour?", "images": ["red.png"], "answer": "red"},
            {"messages": [{"role": "user", "content": "<image>Colour?"}], "images": ["red.png"], "answer": "red"}]
    task = tmp_path / "colours.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = swift_eval.main(["--model", folder, "--eval_dataset", str(task), "--max_new_tokens", "3",
                               "--result_path", str(tmp_path / "eval_result.json")])
    assert results["colours.jsonl"]["kind"] == "generation" and results["colours.jsonl"]["n"] == 2
