"""Window vs full attention in the ViT: held-out scores and the tower's forward time.

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_vit_window.py \\
        --workdir=runs/sweeps/ablate_vit_window
    python -m vlm_jax.experiments.sweep --config=experiments/ablate_vit_window.py --smoke     # 2 runs of 3 steps

Arms (`model.vision.attention`): "full" (the reference, Qwen3-VL: every ViT layer attends over the
whole image) and "window" (Qwen2.5-VL: windowed attention in all layers but a few full ones). Qwen2.5-VL
uses 112-pixel windows (8 x 8 patches of 14 px) with full attention in 4 of 32 layers (7, 15, 23, 31).
At the main job's 64 x 64 images and 8-pixel patches a 64-pixel window would be the whole image, so the
window is 32 pixels (4 x 4 patches, 2 x 2 merged tokens: 4 windows an image), and layer 3 (the last of
the tiny tower's 4) is the full one (`vision.window_size`, `vision.full_attention_layers`). Everything
else is the main job (`synthetic_tiny`, 900 steps, its curriculum).

Measure: held-out counting, grounding and pointing (the whole eval split, with the vision-off control
as the main job), and two times: `vit/forward_ms`, the median of 5 jitted forwards of the trained tower
alone (no merger or decoder) on a full training patch buffer (max_patches 4,096 = 64 images), timed
after training by this file's `measure`; and `train/step_seconds`, the median train step (whole
model) from the run's metric log. Note: our window attention is a mask on the same blocks the full
attention computes (`kernels/attention.segment_attention`; a window's patches are not contiguous in
the 2 x 2-merge patch order), so it saves no FLOPs here: any time difference is noise, and the arms
differ in what each patch may attend to.

Budget (2-core CPU; the main job runs ~0.6 s a step at seq 512 x batch 8): a run is the main job, ~1 min
compile + 9 min training + ~1.5 min evaluation + ~10 s timing = ~11.5 min; 2 arms x 3 seeds = 6 runs =
~70 min (<= 2 h). Times are wall-clock: run the sweep on an otherwise idle machine.
"""

from vlm_jax.experiments import common
from vlm_jax.experiments import measure as measure_lib

CLAIM = ("Window attention (DIGEST 1, Vision encoder): the Qwen2.5-VL variant uses window attention "
         "(112 x 112 pixel windows) in most ViT layers and full attention in a few, RMSNorm + SwiGLU; Qwen3-VL's "
         "ViT attends over each whole image. Windows bound the attention cost by the window, not the image.")
ARM = "attention"
REFERENCE = "full"
# Windows are about cost, not accuracy: the claim expects a faster tower and makes no claim on scores.
EXPECTED = {"window": {"vit/forward_ms": +1}}
FAMILIES = ("counting", "grounding", "pointing")
WINDOW_PIXELS = 32
FULL_LAYERS = (3,)


def _arg(arg):
    a = common.parse(arg, attention="full")
    if a["attention"] not in ("full", "window"):
        raise ValueError(f"experiment arg attention={a['attention']!r}: expected full or window")
    return a


def get_config(arg=None):
    a = _arg(arg)
    c = common.main_job()
    c.stage = "ablate_vit_window"
    c.model.vision.attention = a["attention"]
    if a["attention"] == "window":
        c.model.vision.update(window_size=WINDOW_PIXELS, full_attention_layers=FULL_LAYERS)
    return common.finish(c, a)


def sweep(add, arg=None):
    a = _arg(arg)
    for seed in common.seeds(a):
        for attention in ("full", "window"):
            add(attention=attention, seed=seed)


def measure(arg, config, run_dir):
    a = _arg(arg)
    side = int(config.data.pipeline.processor.max_pixels ** 0.5)
    images = 2 if a["smoke"] else config.data.pipeline.max_patches // (side // config.model.vision.patch_size) ** 2
    ms = measure_lib.vit_forward_ms(run_dir, image_size=side, num_images=images, repeats=1 if a["smoke"] else 5)
    return {"vit/forward_ms": ms}


def metrics(arg=None):
    return [*(f"heldout/{f}" for f in FAMILIES), "vit/forward_ms", "train/step_seconds"]
