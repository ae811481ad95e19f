"""vlm_jax.data.chat_template and .tokenizer: rendering equals the official Qwen3-VL chat templates
(tests/fixtures/*.jinja, rendered by Hugging Face's own Jinja renderer), placeholder expansion equals
Qwen3VLProcessor's, and the loss mask equals hand-written spans.

No tokenizer can be downloaded here, so a small byte-level BPE with Qwen's pre-tokenizer and special
tokens is trained in a fixture.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import types

import numpy as np
import pytest

from vlm_jax.data import chat_template as ct
from vlm_jax.data import processor as P
from vlm_jax.data.tokenizer import QWEN_SPECIAL_TOKENS, load_tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TEMPLATES = {
    "standard": FIXTURES / "qwen3_vl_chat_template.jinja",  # Qwen3-VL-*-Instruct
    "thinking": FIXTURES / "qwen3_vl_thinking_chat_template.jinja",  # Qwen3-VL-*-Thinking
}
# SHA-256 of the Instruct template as shipped in Qwen/Qwen3-VL-8B-Instruct(-GGUF) (5292 bytes).
INSTRUCT_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"

QWEN_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
           "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
NOT_SPECIAL = ["<tool_call>", "</tool_call>", "<think>", "</think>"]  # added, but special=False in Qwen's
CORPUS = ["You are a helpful assistant.", "What is in this picture? A cat sitting on the mat.",
          "The cat jumps. It moves quickly across the room.", "system user assistant tool response",
          "Describe the video in detail, please.", "猫在垫子上。", "seconds 0.5 1.5 2.0 3.0 00:00:03"] * 20


def build_tokenizer_json(path: pathlib.Path, specials=SPECIAL, not_special=NOT_SPECIAL) -> pathlib.Path:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in not_special])
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return build_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def tok(tok_path):
    return load_tokenizer(tok_path.parent)


def trained_spans(tok, out) -> list[str]:
    """The text of each maximal run of loss_mask=True."""
    ids, mask = out["input_ids"], out["loss_mask"]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [tok.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]


# ------------------------------------------------------------------------------------------------
# Tokenizer


def test_load_tokenizer(tok, tok_path, tmp_path):
    assert set(tok.special_ids) == set(QWEN_SPECIAL_TOKENS)
    for name, text in QWEN_SPECIAL_TOKENS.items():
        assert tok.encode(text) == [tok.special_ids[name]]
    assert load_tokenizer(tok_path).special_ids == tok.special_ids  # a file works as well as a directory
    text = "<|im_start|>user\nA cat, 猫.<|im_end|>\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.image_pad_id == tok.token_to_id("<|image_pad|>")
    assert tok.video_pad_id == tok.token_to_id("<|video_pad|>")

    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nowhere")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        load_tokenizer(broken)
    lacking = build_tokenizer_json(tmp_path / "lacking.json", specials=SPECIAL[:3], not_special=["<think>"])
    with pytest.raises(ValueError, match="lacks Qwen special tokens") as e:
        load_tokenizer(lacking)
    for missing in ("<|vision_start|>", "<|image_pad|>", "</think>", "<tool_call>", "<|box_end|>"):
        assert missing in str(e.value)
    assert "'<|im_start|>'" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# Rendering against the official templates


def test_instruct_fixture_is_the_official_template():
    data = TEMPLATES["standard"].read_bytes()
    assert len(data) == 5292 and hashlib.sha256(data).hexdigest() == INSTRUCT_SHA256


def _hf_render(fmt, messages, **kwargs):
    pytest.importorskip("jinja2")
    try:  # Hugging Face's renderer: its sandbox, trim_blocks/lstrip_blocks, tojson, reasoning aliases
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        pytest.skip("transformers is not installed")
    rendered, _ = render_jinja_template([messages], chat_template=TEMPLATES[fmt].read_text(), **kwargs)
    return rendered[0]


TOOLS = [{"type": "function", "function": {"name": "zoom", "description": "Crop and zoom.",
                                           "parameters": {"type": "object", "properties": {
                                               "bbox_2d": {"type": "array"}}}}}]
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system_multi_turn": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me a joke."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Why did the cat..."}]},
    ],
    "images_and_video_in_one_turn": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "image"},
                                     {"type": "text", "text": "Compare these with the clip: "},
                                     {"type": "video", "video": "v.mp4"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "The clip shows the first picture."},
    ],
    "thinking": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cats?"}]},
        {"role": "assistant", "content": "Two.",
         "reasoning": "\nI see one cat on the left and one on the right.\n"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes, two.", "reasoning": "Counting again: two."},
    ],
    "think_tags_in_content": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
    ],
    "tools": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read the sign."}]},
        {"role": "assistant", "content": "", "reasoning": "Zoom first.",
         "tool_calls": [{"type": "function",
                         "function": {"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}}},
                        {"name": "zoom", "arguments": "{\"bbox_2d\": [0, 0, 9, 9]}"}]},
        {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "zoomed"}]},
        {"role": "tool", "content": "second crop"},
        {"role": "assistant", "content": "It says STOP, café.", "reasoning": "Clear now."},
        {"role": "system", "content": "A late system note."},
    ],
}


@pytest.mark.parity
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("fmt", ["standard", "thinking"])
def test_render_equals_official_template(name, fmt):
    messages = CONVERSATIONS[name]
    for add_generation_prompt in (False, True):
        for tools in (None, TOOLS):
            for add_vision_id in (False, True):
                kwargs = dict(add_generation_prompt=add_generation_prompt, tools=tools,
                              add_vision_id=add_vision_id)
                ours = ct.render_text(messages, thinking=fmt, **kwargs)
                assert ours == _hf_render(fmt, messages, **kwargs), kwargs


def test_thinking_formats_written_out():
    messages = CONVERSATIONS["thinking"]
    user1 = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many cats?<|im_end|>\n"
    user2 = "<|im_start|>user\nSure?<|im_end|>\n"
    think1 = "<think>\nI see one cat on the left and one on the right.\n</think>\n\n"
    think2 = "<think>\nCounting again: two.\n</think>\n\n"
    a = "<|im_start|>assistant\n"
    # Instruct: no think blocks at all (no empty one either); reasoning is dropped.
    assert ct.render_text(messages) == user1 + a + "Two.<|im_end|>\n" + user2 + a + "Yes, two.<|im_end|>\n"
    # Thinking: only the turn after the last user query keeps its reasoning.
    assert ct.render_text(messages, thinking=True) == (
        user1 + a + "Two.<|im_end|>\n" + user2 + a + think2 + "Yes, two.<|im_end|>\n")
    assert ct.render_text(messages, thinking="thinking_all_turns") == (
        user1 + a + think1 + "Two.<|im_end|>\n" + user2 + a + think2 + "Yes, two.<|im_end|>\n")
    # The final turn of the Thinking template always has a think block, empty if need be.
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert ct.render_text(plain, thinking=True).endswith(a + "<think>\n\n</think>\n\nHello.<|im_end|>\n")
    assert ct.render_text(plain[:1], add_generation_prompt=True, thinking=True).endswith(a + "<think>\n")
    assert ct.render_text(plain[:1], add_generation_prompt=True).endswith(a)


# ------------------------------------------------------------------------------------------------
# Tokenization and the loss mask

HAND_CHECKED = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And now?"}]},
    {"role": "assistant", "content": "It jumps.", "reasoning": "The cat moves."},
]
HAND_VIDEO = ("<0.5 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
              "<1.5 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|>")
HAND_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4
               + "<|vision_end|>What is this?<|im_end|>\n"
               "<|im_start|>assistant\n")


@pytest.mark.parametrize("thinking", [False, True])
def test_loss_mask_hand_checked(tok, thinking):
    out = ct.tokenize_conversation(HAND_CHECKED, tok, image_grids=[(1, 4, 4)], video_grids=[(2, 2, 4)],
                                   video_timestamps=[[0.5, 1.5]], thinking=thinking)
    answer = ("<think>\nThe cat moves.\n</think>\n\n" if thinking else "") + "It jumps.<|im_end|>"
    expected_text = (HAND_PROMPT + "A cat.<|im_end|>\n<|im_start|>user\n" + HAND_VIDEO
                     + "And now?<|im_end|>\n"
                     + "<|im_start|>assistant\n" + answer + "\n")
    assert out["input_ids"].dtype == np.int32 and out["loss_mask"].dtype == bool
    np.testing.assert_array_equal(out["input_ids"], tok.encode(expected_text))
    assert trained_spans(tok, out) == ["A cat.<|im_end|>", answer]
    # Everything else (system, user, headers, vision, the newline after <|im_end|>) is masked out.
    untrained = tok.decode(out["input_ids"][~out["loss_mask"]])
    assert untrained == expected_text.replace("A cat.<|im_end|>", "").replace(answer, "")
    assert (out["input_ids"] == tok.image_pad_id).sum() == 4
    assert (out["input_ids"] == tok.video_pad_id).sum() == 4


def test_loss_mask_tools_and_generation_prompt(tok):
    messages = CONVERSATIONS["tools"]
    out = ct.tokenize_conversation(messages, tok, image_grids=[(1, 2, 2), (1, 2, 4)], thinking=True,
                                   add_generation_prompt=True)
    calls = ('<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call>\n'
             '<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [0, 0, 9, 9]}}\n</tool_call>')
    # The first assistant turn follows the last user query, and has reasoning: it keeps its think block.
    assert trained_spans(tok, out) == [
        "<think>\nZoom first.\n</think>\n\n" + calls + "<|im_end|>",
        "<think>\nClear now.\n</think>\n\nIt says STOP, café.<|im_end|>",
    ]
    text = tok.decode(out["input_ids"])
    assert text.endswith("<|im_start|>system\nA late system note.<|im_end|>\n"
                         "<|im_start|>assistant\n<think>\n")
    assert not out["loss_mask"][-5:].any()


def test_token_straddling_the_header_is_trained(tok):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nA cat."}]
    out = ct.tokenize_conversation(messages, tok)
    text = ct.render_text(messages)
    np.testing.assert_array_equal(out["input_ids"], tok.encode(text))  # one string, as HF tokenizes it
    spans = trained_spans(tok, out)
    # BPE merges the header's newline with the answer's leading newlines; that token is trained.
    assert len(spans) == 1 and spans[0].endswith("A cat.<|im_end|>") and "\n\n" in spans[0]


@pytest.mark.parity
@pytest.mark.parametrize("fmt", ["standard", "thinking"])
def test_expansion_equals_hf_processor(tok, tok_path, fmt):
    """input_ids equal HF's tokenizer on the text Qwen3VLProcessor builds (its replace_*_token methods)."""
    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    messages = CONVERSATIONS["images_and_video_in_one_turn"]
    image_grids = np.array([[1, 4, 6], [1, 2, 2]])
    video_grids = np.array([[3, 4, 2]])
    frames, fps = [0, 4, 9, 13, 18, 22], 6.0
    hf_proc = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(merge_size=2), image_token="<|image_pad|>",
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        video_token="<|video_pad|>",
        vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
        _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a))
    images = {"image_grid_thw": image_grids}
    meta = VideoMetadata(total_num_frames=23, fps=fps, frames_indices=frames)
    videos = {"video_grid_thw": video_grids, "video_metadata": [meta]}
    # Qwen3VLProcessor (as released, transformers 4.57): an image's pad becomes its pads; a video's whole
    # <|vision_start|><|video_pad|><|vision_end|> becomes its timestamped groups.
    parts = re.split("(<\\|image_pad\\|>|<\\|vision_start\\|><\\|video_pad\\|><\\|vision_end\\|>)",
                     ct.render_text(messages, thinking=fmt))
    n_img = n_vid = 0
    for i in range(1, len(parts), 2):
        if parts[i] == "<|image_pad|>":
            parts[i] = Qwen3VLProcessor.replace_image_token(hf_proc, images, n_img)
            n_img += 1
        else:
            parts[i] = Qwen3VLProcessor.replace_video_token(hf_proc, videos, n_vid)
            n_vid += 1
    hf_ids = PreTrainedTokenizerFast(tokenizer_file=str(tok_path))("".join(parts), add_special_tokens=False)
    ours = ct.tokenize_conversation(messages, tok, image_grids, video_grids,
                                    [P.frame_timestamps(frames, fps)], thinking=fmt)
    np.testing.assert_array_equal(ours["input_ids"], hf_ids["input_ids"])


@pytest.mark.parity
def test_end_to_end_equals_hf_qwen3vl_processor(tok, tok_path):
    """Pixels, grids and ids against a full Qwen3VLProcessor (needs torchvision)."""
    pytest.importorskip("torchvision")
    from transformers import PreTrainedTokenizerFast, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    qwen = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216},
                                              **qwen),
        video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824},
                                              cap_pixels_per_frame=False, **qwen),
        tokenizer=PreTrainedTokenizerFast(tokenizer_file=str(tok_path)), chat_template="unused")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((300, 200, 3), (40, 90, 3))]
    video, fps = rng.integers(0, 256, (20, 64, 96, 3), dtype=np.uint8), 8.0
    messages = CONVERSATIONS["images_and_video_in_one_turn"]
    text = ct.render_text(messages)
    ref = proc(text=[text], images=images, videos=[video], return_tensors="np",
               videos_kwargs={"video_metadata": [VideoMetadata(total_num_frames=20, fps=fps)]})

    cfg = P.get_config(image_resample="torch")
    ims = [P.process_image(im, cfg) for im in images]
    vid = P.process_video(video, fps, cfg)
    np.testing.assert_array_equal(np.concatenate([i["pixel_values"] for i in ims]), ref["pixel_values"])
    np.testing.assert_array_equal(np.concatenate([i["grid_thw"] for i in ims]), ref["image_grid_thw"])
    np.testing.assert_array_equal(vid["pixel_values"], ref["pixel_values_videos"])
    np.testing.assert_array_equal(vid["grid_thw"], ref["video_grid_thw"])
    ours = ct.tokenize_conversation(messages, tok, [i["grid_thw"][0] for i in ims], vid["grid_thw"],
                                    [vid["timestamps"]])
    ours_text, hf_text = tok.decode(ours["input_ids"]), tok.decode(ref["input_ids"][0])
    # transformers 5.x replaces only the <|video_pad|> and leaves the template's outer vision_start/end
    # around the timestamped groups; Qwen3-VL's release (4.57) replaced the whole placeholder, as we do.
    outer = re.sub(r"(<\d+\.\d seconds>.*<\|vision_end\|>)", r"<|vision_start|>\1<|vision_end|>", ours_text)
    assert hf_text in (ours_text, outer)


def test_timestamp_formats(tok):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "video"}]}]
    grids, stamps = [(2, 2, 2), (3, 2, 2)], [[0.25, 61.5], [1.0, 2.0, 3.0]]
    text = tok.decode(ct.tokenize_conversation(messages, tok, video_grids=grids, video_timestamps=stamps,
                                               timestamp_format="hms")["input_ids"])
    assert re.findall(r"<[\d:. a-z]+>", text) == ["<00:00:00>", "<00:01:02>", "<00:00:01>", "<00:00:02>",
                                                   "<00:00:03>"]
    rng = np.random.default_rng(3)
    for _ in range(10):
        text = tok.decode(ct.tokenize_conversation(messages, tok, video_grids=grids, video_timestamps=stamps,
                                                   timestamp_format="random", rng=rng)["input_ids"])
        stamps_text = re.findall(r"<[\d:. a-z]+>", text)
        assert len({("seconds" in s) for s in stamps_text[:2]}) == 1  # one format per video
        assert len({("seconds" in s) for s in stamps_text[2:]}) == 1


def test_mismatched_inputs_raise(tok):
    messages = CONVERSATIONS["images_and_video_in_one_turn"]
    with pytest.raises(ValueError, match=r"sample 'row-7': the conversation has 2 image placeholders but 1 "):
        ct.tokenize_conversation(messages, tok, [(1, 2, 2)], [(1, 2, 2)], [[0.0]], sample_id="row-7")
    with pytest.raises(ValueError, match=r"sample starting 'Compare these.*1 video placeholders but 0 video"):
        ct.tokenize_conversation(messages, tok, [(1, 2, 2)] * 2)
    with pytest.raises(ValueError, match="video 0 has 2 temporal groups but 1 timestamps"):
        ct.tokenize_conversation(messages, tok, [(1, 2, 2)] * 2, [(2, 2, 2)], [[0.0]])
    with pytest.raises(ValueError, match="multiples of merge_size=2"):
        ct.tokenize_conversation(messages, tok, [(1, 3, 2), (1, 2, 2)], [(1, 2, 2)], [[0.0]])
    with pytest.raises(ValueError, match="role must be one of"):
        ct.render_text([{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="thinking must be"):
        ct.render_text(CONVERSATIONS["single"], thinking="sometimes")
    # The Instruct template drops images in assistant turns, so a grid given for one is a mismatch.
    drops = [{"role": "user", "content": "Draw"}, {"role": "assistant", "content": [{"type": "image"}]}]
    with pytest.raises(ValueError, match="0 image placeholders but 1 image grids"):
        ct.tokenize_conversation(drops, tok, [(1, 2, 2)])


def test_unicode_offsets(tok):
    messages = [{"role": "user", "content": "猫 🐈 ?"}, {"role": "assistant", "content": "猫在垫子上。🐈"}]
    out = ct.tokenize_conversation(messages, tok)
    assert trained_spans(tok, out) == ["猫在垫子上。🐈<|im_end|>"]
    assert json.dumps(ct.render_text(messages), ensure_ascii=False).count("🐈") == 2
