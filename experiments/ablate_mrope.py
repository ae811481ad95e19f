"""Interleaved vs chunked MRoPE on video temporal grounding, on videos up to 4x longer than in training.

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_mrope.py --workdir=runs/sweeps/ablate_mrope
    python -m vlm_jax.experiments.sweep --config=experiments/ablate_mrope.py --smoke     # 2 runs of 3 steps

Arms (`model.text.mrope_layout`): "interleaved" (Qwen3-VL: rotary frequency pairs cycle t, h, w, so
time spans low and high frequencies) and "chunked" (the reference, Qwen2/2.5-VL: the first pairs, the
highest frequencies, go to time; the tiny model's `mrope_section` (6, 5, 5) of 16 pairs).

Model: the main job's (`synthetic_tiny`: tiny, 8-pixel patches, its learning-rate split), on a video
world: the main job's scenes (3 shapes x 3 colours, large objects, questions before the media) with
the tasks `video_temporal` (when does the <object> appear / disappear?) and `video_count`, 8 frames
at 2 fps (4 s, 4 temporal patch groups of 16 visual tokens, each after its text timestamp). No
curriculum (it stages image grounding).

Longer videos than any seen in training: the world's `video_frames` sets the length, so the extra
evaluations score the same model on videos of 16 frames (`long16`: 8 s, 8 groups) and 32 frames
(`long32`: 16 s, 16 groups) of the same world. Their events fall anywhere in the video, so most of
them lie past the 4 s that training ever showed: the model must place groups (and read timestamps)
at temporal positions it never trained on. With text timestamps every group's t position is its
running index (`model/rope.get_rope_index`), so a longer video moves t, h, w together past the
training range, which is where the two layouts differ (time on high frequencies only, or on all).
Measure: temporal accuracy (|answer - event time| <= 0.5 / fps = 0.25 s) at 8, 16 and 32 frames.

Budget (2-core CPU; the main job runs ~0.6 s a step at seq 512 x batch 8, 22.5 GFLOP by the train
loop's count): a video sample is 4 groups x 64 patches = 256 patches (an image: 64), so a step holds
24 videos (max_patches 6,144) at 22.9 GFLOP, ~0.6 s by the FLOP ratio. A run is ~1 min compile + 900
steps x 0.6 s = 9 min + evaluation (held-out 2 x 400 items, long16 400, long32 300: ~2.5 min) = ~12.5
min; 2 arms x 3 seeds = 6 runs = ~75 min (<= 2 h).
"""

from vlm_jax.experiments import common

CLAIM = ("Interleaved MRoPE (DIGEST 1, Interleaved MRoPE): Qwen2-VL/2.5-VL split the rotary frequencies "
         "into chunks [t t t ... h h h ... w w w], so time only gets the high frequencies, an unbalanced "
         "spectrum that hurts long video; Qwen3-VL interleaves them [t h w t h w ...] so every axis spans low "
         "and high frequencies.")
ARM = "mrope_layout"
REFERENCE = "chunked"
# The claim is about long videos; on training-length videos it makes none.
EXPECTED = {"interleaved": {"long*": +1}}
TRAIN_FRAMES = 8
LONG = {"long16": (16, 400), "long32": (32, 300)}  # eval name -> (video frames, items)


def _arg(arg):
    return common.parse(arg, mrope_layout="interleaved")


def get_config(arg=None):
    a = _arg(arg)
    c = common.video_config(a, "ablate_mrope", frames=TRAIN_FRAMES, fps=2.0)
    c.model.text.mrope_layout = a["mrope_layout"]
    return common.finish(c, a)


def sweep(add, arg=None):
    a = _arg(arg)
    for seed in common.seeds(a):
        for layout in ("chunked", "interleaved"):
            add(mrope_layout=layout, seed=seed)


def evals(arg=None):
    a = _arg(arg)
    return {name: {"world": {"video_frames": frames}, "tasks": ("temporal",),
                   "num_per_task": common.eval_items(a, n)} for name, (frames, n) in LONG.items()}


def metrics(arg=None):
    return ["heldout/temporal", *(f"{name}/temporal" for name in LONG), "heldout/counting"]
