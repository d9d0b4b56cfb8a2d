"""Multimodal rows (ms-swift's `images` / `videos` and `<image>` / `<video>` tags): the encodings equal
ms-swift's own (golden files from scripts/record_ms_swift_vl.py) and transformers' Qwen2-VL processor; tags are
added as ms-swift adds them and surplus tags, missing files and remote URLs are errors naming the row; videos
preprocessed in numpy equal transformers' processing frame by frame; the pipeline packs several samples' vision
tokens into a row."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import transformers

from swift_jax.data import DataArgs, DataError, build_data
from swift_jax.data.formats import normalize
from swift_jax.data.media import add_default_tags, content_parts, row_media
from swift_jax.data.vision import VisionData
from swift_jax.data.video_sizing import VideoSizing, frame_size, video_size
from swift_jax.data.videos import VideoSettings, preprocess_videos, read_video
from swift_jax.modeling import model_config, read_hf_config
from vl_fixtures import build_vl_folder, color_image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden", "vl")
DEMO = os.path.join(ROOT, "swift_jax", "assets", "vl_demo")


def _golden_vision(template):
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(GOLDEN, "processor"))
    ids = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(os.path.join(GOLDEN, "processor"))
    config = SimpleNamespace(image_token_id=ids[0], video_token_id=ids[1], merge_unit=4)
    video = VideoSettings.from_pretrained(os.path.join(GOLDEN, "processor"), processor)
    return tok, VisionData(template, config, processor, template, video)


@pytest.mark.parametrize("template", ["qwen2_vl", "qwen2_5_vl"])
def test_encodings_equal_ms_swift(template):
    with open(os.path.join(GOLDEN, "ms_swift_vl.json")) as f:
        golden = json.load(f)
    tok, vision = _golden_vision(template)
    encoder = DataArgs(template=template).chat_encoder(tok)
    trains_all = DataArgs(template=template, loss_scale="all").chat_encoder(tok)
    for name, row in golden["rows"].items():
        expected = golden["encoded"][template][name]
        media = row_media(row, name, base=GOLDEN)
        got = vision.encode(encoder, normalize(row, media=True), media, name)
        assert got["input_ids"].tolist() == expected["input_ids"], name
        assert got["labels"].tolist() == expected["labels"], name
        assert got["image_grid_thw"].tolist() == expected["image_grid_thw"], name
        # --loss_scale all trains the user turns, but never an image's <|vision_start|> ... <|vision_end|>
        expected = golden["encoded_loss_scale_all"][template][name]
        got = vision.encode(trains_all, normalize(row, media=True), media, name)
        assert got["input_ids"].tolist() == expected["input_ids"], name
        assert got["labels"].tolist() == expected["labels"], name


# ms-swift upscales the "small" frames with torchvision's antialiased bicubic on tensors, ours with PIL's: they
# differ by at most one uint8 level (1 / 255 / std ~ 0.015 normalised)
PIXEL_ATOL = {"video_small_upscaled": 0.02}


@pytest.mark.parametrize("template", ["qwen2_vl", "qwen2_5_vl"])
def test_video_encodings_equal_ms_swift(template, monkeypatch):
    """Frame-list videos: ids, labels, grid and seconds per grid equal ms-swift's; pixel values equal at 1e-5
    (shape, sums and 512 sampled values) where ms-swift resizes with PIL, within PIXEL_ATOL where torchvision."""
    for name in ("VIDEO_MAX_PIXELS", "VIDEO_MIN_PIXELS", "MAX_PIXELS", "MIN_PIXELS", "FPS", "VIDEO_MIN_TOKEN_NUM"):
        monkeypatch.delenv(name, raising=False)
    with open(os.path.join(GOLDEN, "ms_swift_vl.json")) as f:
        golden = json.load(f)
    tok, vision = _golden_vision(template)
    encoder = DataArgs(template=template).chat_encoder(tok)
    for name, row in golden["video_rows"].items():
        expected = golden["video_encoded"][template][name]
        media = row_media(row, name, base=GOLDEN)
        got = vision.encode(encoder, normalize(row, media=True), media, name)
        assert got["input_ids"].tolist() == expected["input_ids"], name
        assert got["labels"].tolist() == expected["labels"], name
        assert got["video_grid_thw"].tolist() == expected["video_grid_thw"], name
        if "second_per_grid_ts" in expected:
            assert got["second_per_grid_ts"].tolist() == expected["second_per_grid_ts"], name
        ref, pixels = expected["pixel_values_videos"], got["pixel_values_videos"]
        assert list(pixels.shape) == ref["shape"] and pixels.dtype == np.float32, name
        atol = PIXEL_ATOL.get(name, 1e-5)
        np.testing.assert_allclose(pixels.reshape(-1)[ref["indices"]], ref["values"], atol=atol, err_msg=name)
        assert abs(pixels.astype(np.float64).sum() - ref["sum"]) < atol * pixels.size, name


def test_video_sizing_reads_ms_swift_environment_variables():
    """VIDEO_MAX_PIXELS / VIDEO_MIN_PIXELS become token numbers (pixels // factor**2) as in ms-swift, the token
    numbers themselves win, and FPS / FRAME_FACTOR are read as is."""
    env = {"VIDEO_MAX_PIXELS": str(100 * 28 * 28 + 5), "VIDEO_MIN_PIXELS": str(8 * 28 * 28), "FPS": "1"}
    s = VideoSizing.from_env(28, 2, env)
    assert (s.video_max_token_num, s.video_min_token_num, s.fps, s.frame_factor) == (100, 8, 1.0, 2)
    assert VideoSizing.from_env(28, 2, {**env, "VIDEO_MIN_TOKEN_NUM": "16"}).video_min_token_num == 16
    # a 2-frame 56x84 video: frames to multiples of 56 (ms-swift's factor 28 x merge 2), then >= 8 tokens of 28 px
    assert frame_size(56, 84, s) == (112, 168) and video_size(2, 112, 168, s) == (112, 168)
    assert video_size(2, 56, 56, s) == (84, 84)  # 9 tokens: the smallest square over 8
    with pytest.raises(DataError, match="FPS='fast' is not a float"):
        VideoSizing.from_env(28, 2, {"FPS": "fast"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_vl_folder(str(tmp_path_factory.mktemp("qwen2_vl")), "qwen2_vl", max_pixels=48 * 48)


@pytest.fixture(scope="module")
def vision(folder):
    cfg, _ = model_config(read_hf_config(folder))
    return VisionData.from_pretrained(folder, cfg.vision)


def test_expansion_equals_transformers_processor_rule(folder, vision):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    encoder = DataArgs(template=vision.template).chat_encoder(tok)
    images = [color_image((10, 200, 10), (40, 28)), color_image((200, 10, 10), (16, 56))]
    row = {"messages": [{"role": "user", "content": "A <image> B"}, {"role": "assistant", "content": "C"}], "images": images}
    got = vision.encode(encoder, normalize(row, media=True), row_media(row), "row")
    rendered = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" \
               "<|vision_start|><|image_pad|><|vision_end|>A <|vision_start|><|image_pad|><|vision_end|> B<|im_end|>\n" \
               "<|im_start|>assistant\nC<|im_end|>\n"
    # Qwen2VLProcessor's expansion (its constructor wants a torchvision video processor): each <|image_pad|> of
    # the text becomes grid.prod() // merge_size**2 of them, then the text is tokenized
    ref = transformers.Qwen2VLImageProcessorPil.from_pretrained(folder)(images=images, return_tensors="np")
    for grid in ref["image_grid_thw"]:
        rendered = rendered.replace("<|image_pad|>", "<|placeholder|>" * (int(np.prod(grid)) // 4), 1)
    expected = tok(rendered.replace("<|placeholder|>", "<|image_pad|>"), add_special_tokens=False)["input_ids"]
    assert got["input_ids"].tolist() == expected
    np.testing.assert_allclose(got["pixel_values"], ref["pixel_values"], atol=1e-6)
    pads = got["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert pads.sum() == np.prod(ref["image_grid_thw"], -1).sum() // 4 and (got["labels"][pads] == -100).all()


def test_tags_are_added_as_ms_swift_and_surplus_tags_name_the_row(tmp_path, folder, vision):
    media = {"image": ["a", "b"], "video": ["v"]}
    messages = [{"role": "system", "content": "See <image>."}, {"role": "user", "content": "Hi"}]
    out = add_default_tags(messages, media, "r")
    # the system prompt's tag counts; ms-swift prepends the images' tags, then the videos' before them
    assert out[1]["content"] == "<video><image>Hi" and out[0]["content"] == "See <image>."
    with pytest.raises(DataError, match=r"r: 2 <image> tags in the messages but 1 images"):
        add_default_tags([{"role": "user", "content": "<image><image>"}], {"image": ["a"], "video": []}, "r")
    image = tmp_path / "ok.png"
    color_image((0, 0, 0)).save(image)
    rows = [{"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}], "images": ["ok.png"]},
            {"messages": [{"role": "user", "content": "<image><image>x"}, {"role": "assistant", "content": "y"}], "images": ["ok.png"]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "images": ["missing.png"]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "images": ["https://a.b/c.png"]}]
    expected = ["", "line 1: 2 <image> tags", "line 1: images[0]: 'missing.png' is neither", "line 1: images[0]: remote image"]
    for i, (row, message) in enumerate(zip(rows, expected)):
        data = tmp_path / f"d{i}.jsonl"
        data.write_text(json.dumps(row) + "\n" + json.dumps(rows[0]) + "\n")
        args = DataArgs(dataset=[str(data)], max_length=256, template="qwen2_vl")
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        if not message:
            assert build_data(args, tok, batch_size=1, vision=vision).stats["num_train_samples"] == 2
            continue
        with pytest.raises(DataError, match=message.replace("line", f"d{i}.jsonl, line").replace("[", r"\[").replace("]", r"\]")):
            build_data(args, tok, batch_size=1, vision=vision)


def test_openai_content_parts_become_tags():
    messages, media = content_parts([{"role": "user", "content": [
        {"type": "text", "text": "Is "}, {"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": " red?"},
        {"type": "video", "video": ["f0.png", "f1.png"]}]}])
    assert messages[0]["content"] == "Is <image> red?<video>" and media == {"image": ["data:x"], "video": [["f0.png", "f1.png"]]}
    with pytest.raises(DataError, match=r"content\[0\] has type 'audio_url'"):
        content_parts([{"role": "user", "content": [{"type": "audio_url"}]}])


@pytest.mark.parametrize("size", [(32, 48), (16, 40)])
def test_videos_equal_transformers_processing_frame_by_frame(folder, size):
    """transformers' Qwen2VLVideoProcessor needs torchvision (not installable beside the CPU torch here), so the
    reference is its image processor (PIL, as ours), both unresized (ms-swift sizes frames before, with
    `do_resize=False`): a video whose frames come in equal pairs [A, A, B, B, C] must give, at temporal step t,
    the patches transformers gives for the t-th image (an image is one frame repeated over the temporal
    patch), with the last frame repeated to fill its pair."""
    image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(folder)
    settings = VideoSettings.from_pretrained(folder, image_processor)
    a, b, c = (color_image((40 * i, 200 - 40 * i, 90), size) for i in range(3))
    ours = preprocess_videos(settings, [([a, a, b, b, c], 2.0)])
    ref = image_processor(images=[a, b, c], do_resize=False, return_tensors="np")
    t, h, w = ours["video_grid_thw"][0]
    assert t == 3 and (h, w) == tuple(ref["image_grid_thw"][0][1:])
    np.testing.assert_allclose(ours["pixel_values_videos"], ref["pixel_values"], atol=1e-6)
    assert ours["second_per_grid_ts"].tolist() == [1.0]  # 2 frames a patch at 2 fps


def test_video_files_decode_with_pyav(tmp_path, folder):
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(8):  # 2 s at 4 fps -> 4 frames at 2 fps
            frame = av.VideoFrame.from_image(color_image((30 * i, 100, 100)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames, fps = read_video(path)
    assert len(frames) == 4 and fps == pytest.approx(2.0)
    with pytest.raises(DataError, match="videos\\[0\\]: expected a list of frames or a local video file"):
        read_video(str(tmp_path / "nope.mp4"), where="videos[0]")


def test_packed_rows_carry_several_samples_vision_tokens(folder, vision):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    args = DataArgs(dataset=[os.path.join(DEMO, "train.jsonl")], max_length=256, packing=True, dataset_shuffle=False)
    pipe = build_data(args, tok, batch_size=2, vision=vision)
    batch = next(pipe.train_iterator(1))
    pad = vision.config.image_token_id
    for row in range(2):
        segments = [s for s in np.unique(batch["segment_ids"][row]) if s > 0]
        with_images = [s for s in segments if (batch["input_ids"][row][batch["segment_ids"][row] == s] == pad).any()]
        assert len(with_images) >= 2
        frames = batch["frame_ids"][row]
        assert len(np.unique(frames[frames > 0])) >= len(with_images)  # frames of different samples never share an id
    assert batch["positions"].shape == (*batch["input_ids"].shape, 3)
    assert pipe.stats["packing_efficiency"] > 0.8


def test_two_processes_keep_their_rows_of_one_packed_global_batch(folder, vision):
    """Packed multimodal rows are packed whole on every process, which keeps its rows of each global batch: the
    two host batches are the one process's batch, patches and their slot shape included."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    args = DataArgs(dataset=[os.path.join(DEMO, "train.jsonl")], max_length=256, packing=True)
    one = build_data(args, tok, batch_size=2, vision=vision).train_iterator()
    hosts = [build_data(args, tok, batch_size=1, vision=vision, process_index=p, process_count=2).train_iterator()
             for p in range(2)]
    for _ in range(3):
        whole, parts = next(one), [next(h) for h in hosts]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=key)
