"""Gemma 3 image rows end to end (tiny random checkpoint folder): encoded rows (ms-swift's `gemma3_vision`:
each `<start_of_image>` spliced to the full image sequence, its soft tokens expanded and never trained) in
padded and packed training batches give transformers' logits for each sample (float32 < 1e-4; image tokens
attend to their whole image), greedy generation with an image equals `transformers.generate`, and the OpenAI
server answers `image_url` parts."""

import os

import numpy as np
import pytest
import torch
import transformers

import swift_jax
from swift_jax.data import DataArgs
from swift_jax.data.vision import IGNORE, VisionData, prompt_inputs
from swift_jax.generation import GenerationConfig, Generator
from vl_fixtures import build_gemma3_folder, color_image, encode_tile_rows, padded_and_packed_logit_diffs, tile_model_folder

TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tile_model_folder(str(tmp_path_factory.mktemp("gemma3")), build_gemma3_folder)


@pytest.fixture(scope="module")
def models(folder):
    hf = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, swift_jax.load_model(folder)


def _hf_logits(hf, encoded):
    ids = torch.as_tensor(encoded["input_ids"][None].astype(np.int64))
    types = (ids == hf.config.image_token_id).long()  # ms-swift's token_type_ids: the bidirectional image blocks
    with torch.no_grad():
        return hf(input_ids=ids, pixel_values=torch.as_tensor(encoded["pixel_values"]), token_type_ids=types).logits[0].numpy()


def test_rows_splice_the_image_sequence_and_never_train_it(folder, models):
    vision, tok, encoded = encode_tile_rows(folder, models[1])
    assert vision.template == "gemma3_vision"
    image = tok.convert_tokens_to_ids("<image_soft_token>")
    for e, n in zip(encoded, (1, 2, 1)):
        assert e["pixel_values"].shape == (n, 3, 16, 16)
        assert (e["input_ids"] == image).sum() == 4 * n
    text = tok.decode(encoded[0]["input_ids"])
    image_sequence = "\n\n<start_of_image>" + "<image_soft_token>" * 4 + "<end_of_image>\n\n"
    assert text.startswith("<bos><start_of_turn>user\n" + image_sequence + "What colour?")
    trained = tok.decode(encoded[1]["input_ids"][encoded[1]["labels"] != IGNORE])
    assert trained == "two<end_of_turn>", trained


def test_padded_and_packed_batches_give_transformers_logits(folder, models):
    hf, ours = models
    vision, _, encoded = encode_tile_rows(folder, ours)
    refs = [_hf_logits(hf, e) for e in encoded]
    padded, packed, padded_diff, packed_diff = padded_and_packed_logit_diffs(ours, vision, encoded, refs, max_tiles=4)
    assert padded["pixel_values"].shape == (3, 2, 3, 16, 16)
    seg = packed["segment_ids"][0]
    assert sorted(np.unique(seg).tolist()) == [0, 1, 2, 3] and packed["pixel_values"].shape == (1, 4, 3, 16, 16)
    print(f"gemma3 padded {padded_diff:.2e} packed {packed_diff:.2e}")
    assert padded_diff < TOL and packed_diff < TOL


def test_greedy_generation_with_an_image_equals_transformers(folder, models):
    hf, ours = models
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    vision = VisionData.from_pretrained(folder, ours.config.vision)
    encoder = DataArgs(template=vision.template).chat_encoder(tok)
    messages = [{"role": "user", "content": "<image>Describe."}]
    prompts = [prompt_inputs(vision, encoder, messages, media={"image": [os.path.join(folder, f"{i}.png")], "video": []})
               for i in (1, 0)]
    outs = Generator(ours, tok).generate_ids(prompts, GenerationConfig(max_new_tokens=6, eos_token_ids=()))
    for prompt, out, i in zip(prompts, outs, (1, 0)):
        pixels = vision.pixels({"image": [os.path.join(folder, f"{i}.png")], "video": []}, "row")["pixel_values"]
        ids = torch.as_tensor([prompt.ids])
        with torch.no_grad():
            types = (ids == hf.config.image_token_id).long()
            ref = hf.generate(input_ids=ids, pixel_values=torch.as_tensor(pixels), token_type_ids=types,
                              max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert list(out.token_ids) == ref[0, len(prompt.ids):].tolist()


def test_openai_server_takes_image_url_parts(folder, models):
    import base64
    import io
    import threading

    import openai

    from swift_jax.deploy import ChatServer, DeployArgs, make_server

    ours = models[1]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    vision = VisionData.from_pretrained(folder, ours.config.vision)
    gen = Generator(ours, tok)
    args = DeployArgs(model=folder, served_model_name="tiny", max_new_tokens=4, template=vision.template)
    server = make_server(ChatServer(gen, args, vision), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="-", timeout=60, max_retries=0)
    try:
        image = color_image((0, 200, 0), (20, 40))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What colour?"}]
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}], temperature=0)
        encoder = DataArgs(template=vision.template).chat_encoder(tok)
        prompt = prompt_inputs(vision, encoder, [{"role": "user", "content": "<image>What colour?"}],
                               media={"image": [image], "video": []})
        assert reply.choices[0].message.content == gen.generate_ids([prompt], GenerationConfig(max_new_tokens=4))[0].text
        assert reply.usage.prompt_tokens == len(prompt.ids)
    finally:
        server.shutdown()
        server.server_close()
