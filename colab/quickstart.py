# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlm-jax/vlm_jax/blob/main/colab/quickstart.ipynb)
#
# # vlm_jax quickstart: a Hugging Face checkpoint in, a grounded answer out
#
# 1. build a tiny random Qwen3-VL with `transformers` and save it as a Hugging Face checkpoint,
# 2. convert it to a vlm_jax params dir (`python -m vlm_jax.convert hf-to-jax`),
# 3. ask it to locate an object in an image of the built-in synthetic world,
# 4. parse its answer with the evaluation harness and draw the boxes on the image.
#
# The same steps work for a released checkpoint (e.g. `Qwen3-VL-2B-Instruct`); here everything is built
# locally, so nothing is downloaded.

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # Colab has torch; vlm_jax and a transformers that knows Qwen3-VL come from pip
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "vlm_jax @ git+https://github.com/vlm-jax/vlm_jax",
                    "transformers>=4.57"], check=True)

# %% tags=["parameters"]
SMOKE = False  # True: the CI size (fewer new tokens); the steps are the same
WORKDIR = "runs/colab/quickstart"

# %%
import os

import transformers
from IPython.display import display

from vlm_jax.configs import model as model_configs
from vlm_jax.convert import hf
from vlm_jax.eval import harness, metrics, tasks, visualize
from vlm_jax.inference.generate import generate
from vlm_jax.inference.loading import load_model
from vlm_jax.inference.prompt import batch_prompts, build_prompt
from vlm_jax.params.store import save_params

HF_DIR, PARAMS_DIR = os.path.join(WORKDIR, "hf"), os.path.join(WORKDIR, "params")
MAX_NEW_TOKENS = 8 if SMOKE else 40  # a grounding answer is <= 34 tokens, + <|im_end|>
# The synthetic world's 64 x 64 images as they are: 4 x 4 patches of 16 pixels, 4 visual tokens after the merge.
PROCESSOR = {"min_pixels": 64 * 64, "max_pixels": 64 * 64}

# %% [markdown]
# ## 1. A tiny random Qwen3-VL in Hugging Face format
#
# The `tiny` model config (4 ViT blocks of width 64, 4 decoder layers of width 128), written as a
# Hugging Face `config.json` by `hf.hf_config_from`; `transformers` builds the model from it with random
# weights and saves it as any released checkpoint is saved (`config.json` + `model.safetensors`). Its
# special tokens sit at the synthetic world's tokenizer ids, so that tokenizer reads its prompts.

# %%
transformers.set_seed(0)  # the random weights, and so the reply, are the same on every run
hf_config = transformers.AutoConfig.for_model(**hf.hf_config_from(model_configs.get_config("tiny")))
transformers.AutoModelForImageTextToText.from_config(hf_config).save_pretrained(HF_DIR)
sorted(os.listdir(HF_DIR))

# %% [markdown]
# ## 2. Convert it to vlm_jax
#
# What the command-line converter does (`hf.load_hf_checkpoint`, then `save_params`); in a shell:
# `python -m vlm_jax.convert hf-to-jax --hf_dir=runs/colab/quickstart/hf --out=runs/colab/quickstart/params`.
# A params dir holds `model_config.json` and the params (Orbax). Without a `tokenizer.json` in it,
# `load_model` uses the synthetic world's tokenizer.

# %%
converted_config, converted_params = hf.load_hf_checkpoint(HF_DIR)
save_params(converted_params, converted_config, PARAMS_DIR)
model_config, params, tokenizer = load_model(PARAMS_DIR)
print(model_config.name, "| vocabulary:", tokenizer.vocab_size, "tokens")

# %% [markdown]
# ## 3. Generate with an image
#
# The first held-out grounding question of the synthetic world: an image and "Locate the ... and output
# its bbox coordinates in JSON format". `build_prompt` applies the chat template and the image processor;
# `generate` decodes greedily until `<|im_end|>`.

# %%
item = tasks.synthetic_items("grounding", 1)[0]
print(*(c["text"] for c in item.messages[0]["content"] if c["type"] == "text"))
print("reference:", item.reference)

prompt = build_prompt(item.messages, item.images, item.videos, tokenizer, PROCESSOR)
stop = (tokenizer.im_end_id, tokenizer.pad_id)
out = generate(model_config, params, **batch_prompts([prompt]), max_new_tokens=MAX_NEW_TOKENS, stop_tokens=stop,
               pad_token_id=tokenizer.pad_id)
reply = harness.decode_reply(tokenizer, out.sequences()[0], stop)
print("reply:", repr(reply))

# %% [markdown]
# ## 4. Parse the answer and draw the boxes
#
# The evaluation harness scores the reply as it scores every grounding item (`acc@iou0.5`: the first
# predicted box has IoU >= 0.5 with the reference); `metrics.parse_boxes` reads the `bbox_2d` boxes of a
# Qwen3-VL JSON answer, in [0, 1000] coordinates. `visualize.render` draws the reference in green and the
# model's boxes in red.
#
# **A random model cannot ground**: its reply is noise with no box in it, so only the reference box (green)
# is drawn. The `train_synthetic` notebook trains the same model from scratch until its boxes land.

# %%
result = harness.score_items([item], [reply]).results[0]
boxes = metrics.parse_boxes(result.final)
print("predicted boxes:", boxes or "none (only the reference is drawn)", "| score:", result.score)
picture = visualize.render(item, result)
picture.save(os.path.join(WORKDIR, "grounding.png"))
display(picture)
