"""The Qwen-VL resampler with 64 / 144 / 256 / 400 queries vs the 2x2 MLP merger.

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_merger.py --workdir=runs/sweeps/ablate_merger
    python -m vlm_jax.experiments.sweep --config=experiments/ablate_merger.py --smoke     # 2 runs of 3 steps

Arms (`merger`): "mlp" (Qwen2/3-VL: each 2x2 block of patches -> one token) and "resampler64",
"resampler144", "resampler256" (the reference: Qwen-VL's choice), "resampler400" (`model.merger =
"resampler"` with `model.resampler_num_queries` queries: one cross-attention layer compressing an
image's patches to that many tokens). The resampler changes the visual token count, so DeepStack is
off in every arm (the model config refuses DeepStack with a resampler); so is `merger_center`, the
main job's from-scratch lever, which only the MLP path implements: the arms differ in the connector alone.

Image size: at the main job's 64 x 64 pixels and 8-pixel patches an image is 64 patches (16 MLP tokens),
fewer than any query count, so the resampler would expand rather than compress. Here images are 128 x
128 pixels with 4-pixel patches: 32 x 32 = 1,024 patches, Qwen-VL's own setting (1,024 patches -> 64 /
144 / 256 / 400 queries, 16x to 2.6x compression; the MLP merger gives 256 tokens, 4x). The rest is
the main job (tiny model, its world and learning-rate split, its curriculum scaled to 200 steps), with
the ViT attending within each 1,024-patch image (`attention_block`) and every step limited to 8 images
(`max_patches` 8 x 1,024; a row of 512 tokens holds one sample of <= 400 visual tokens), so all arms
train on the same number of images per step whatever their token counts.

Status: every arm runs. The data pipeline and the prompt builder place `resampler_num_queries`
placeholders per image on the queries' side x side MRoPE grid (`processor.llm_grids`; the processor's
`merger` keys follow the model's through the experiment config and the exported `processor_config.json`),
while the pixels and the patch budget stay the real 1,024 patches. `sweep.check_batches` still checks one
packed batch per arm against its model at launch.

Measure: held-out counting exact match, grounding acc@IoU 0.5 and pointing accuracy (300 items each,
without the vision-off control to keep the budget).

Budget (2-core CPU; the main job runs ~0.6 s a step at seq 512 x batch 8, 22.5 GFLOP by the train
loop's count): 8 images of 1,024 patches make a step of ~46 GFLOP, ~1.2 s by the FLOP ratio, plus the
resampler's cross-attention (its queries attend over the whole step's patch buffer, masked to their
image: up to ~20 GFLOP more with 400 queries), ~1.4 s on average over the arms. A run is ~1 min compile
+ 200 steps x 1.4 s = ~4.7 min + ~1.3 min evaluation (900 items, up to 400 visual tokens each) = ~7
min; 5 arms x 3 seeds = 15 runs = ~105 min (<= 2 h). 200 steps of 8 images is far less training than the
main job's 900 steps of ~60 samples: expect scores near the baselines, and compare the arms with each
other rather than with the main job.
"""

from vlm_jax.experiments import common

CLAIM = ("Resampler queries (DIGEST 1, Merger): Qwen-VL (v1) compressed 1024 ViT patches to 256 tokens with a "
         "single cross-attention layer of learnable queries; queries 64/144/256/400 were tried and 256 was best. "
         "Qwen2/3-VL use the 2x2 MLP merger instead.")
ARM = "merger"
REFERENCE = "resampler256"
# 256 was best among the query counts; the report compares the MLP merger with none of them.
EXPECTED = {"resampler64": -1, "resampler144": -1, "resampler400": -1}
ARMS = ("mlp", "resampler64", "resampler144", "resampler256", "resampler400")
IMAGE, PATCH = 128, 4
PATCHES = (IMAGE // PATCH) ** 2  # per image
IMAGES_PER_STEP = 8
FAMILIES = ("counting", "grounding", "pointing")


def _arg(arg):
    a = common.parse(arg, merger="mlp")
    if a["merger"] not in ARMS:
        raise ValueError(f"experiment arg merger={a['merger']!r}: expected one of {', '.join(ARMS)}")
    return a


def get_config(arg=None):
    a = _arg(arg)
    c = common.main_job()
    c.stage = "ablate_merger"
    m = c.model
    m.deepstack = False
    m.merger_center = False
    if a["merger"] != "mlp":
        m.merger = "resampler"
        m.resampler_num_queries = int(a["merger"].removeprefix("resampler"))
    m.vision.patch_size = PATCH
    m.vision.attention_block = PATCHES
    c.data.sources.synthetic.world = {**c.data.sources.synthetic.world, "image_size": (IMAGE, IMAGE)}
    c.data.pipeline.update(max_patches=IMAGES_PER_STEP * PATCHES, max_grids=IMAGES_PER_STEP)
    c.data.pipeline.processor.update(min_pixels=IMAGE * IMAGE, max_pixels=IMAGE * IMAGE, patch_size=PATCH)
    common.set_steps(c, 200)  # the main job's curriculum and warm-up, scaled to 200 of 900 steps
    c.train.checkpoint.every_steps = 100
    c.eval.update(tasks=FAMILIES, num_per_task=common.eval_items(a, 300), vision_off_control=False)
    return common.finish(c, a)


def sweep(add, arg=None):
    a = _arg(arg)
    arms = ("mlp", REFERENCE) if a["smoke"] else ARMS
    for seed in common.seeds(a):
        for merger in arms:
            add(merger=merger, seed=seed)


def metrics(arg=None):
    return [f"heldout/{f}" for f in FAMILIES]
