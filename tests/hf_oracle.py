"""The numerical oracle: tiny random Hugging Face Qwen3-VL models built locally (no download),
with weights perturbed away from their initial values so every parameter matters.

Importing this module skips the importing test when torch or transformers is missing: tests that
compare against the reference take the `oracle` fixture (conftest.py); everything else uses
`tests/helpers.py`."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vlm_jax.convert import hf as convert  # noqa: E402
from vlm_jax.model import rope  # noqa: E402


def hf_model(c, seed: int = 0):
    """A random HF model for our config, every tensor perturbed (norm scales, biases too)."""
    torch.manual_seed(seed)
    cfg_dict = convert.hf_config_from(c)
    moe = bool(c.text.num_experts)
    cls_cfg = transformers.Qwen3VLMoeConfig if moe else transformers.Qwen3VLConfig
    cls = transformers.Qwen3VLMoeForConditionalGeneration if moe else transformers.Qwen3VLForConditionalGeneration
    model = cls(cls_cfg(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "model_type")}))
    model.config._attn_implementation = "eager"
    for sub in (model.model.visual.config, model.model.language_model.config):
        sub._attn_implementation = "eager"
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.5 if p.ndim == 1 else 0.1
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def params_from(model, c):
    sd = model.state_dict()
    return convert.params_from_hf_tensors(((k, v.detach().numpy()) for k, v in sd.items()), c)


def hf_positions(model, input_ids, attention_mask, image_grid, video_grid, c):
    types = rope.token_types(input_ids, c.image_token_id, c.video_token_id)
    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.long)
    pos, deltas = model.model.get_rope_index(t(input_ids), t(types), image_grid_thw=t(image_grid),
                                             video_grid_thw=t(video_grid), attention_mask=t(attention_mask))
    return pos.numpy(), deltas.numpy()


def hf_logits(model, c, input_ids, attention_mask=None, pixel_values=None, image_grid=None, video_pixels=None,
              video_grid=None):
    t = lambda a, dt=torch.long: None if a is None else torch.as_tensor(np.asarray(a), dtype=dt)
    types = rope.token_types(input_ids, c.image_token_id, c.video_token_id)
    with torch.no_grad():
        out = model(input_ids=t(input_ids), attention_mask=t(attention_mask),
                    pixel_values=t(pixel_values, torch.float32), image_grid_thw=t(image_grid),
                    pixel_values_videos=t(video_pixels, torch.float32), video_grid_thw=t(video_grid),
                    mm_token_type_ids=t(types, torch.int32))
    return out.logits.numpy()
