"""Text timestamps vs absolute-time temporal ids for video, scored at several frame rates.

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_video_time.py \\
        --workdir=runs/sweeps/ablate_video_time
    python -m vlm_jax.experiments.sweep --config=experiments/ablate_video_time.py --smoke     # 2 runs of 3 steps

Arms (`model.video_time_encoding`): "timestamps" (Qwen3-VL: a text timestamp such as `<1.0 seconds>`
before each temporal group of 2 frames, the group's MRoPE temporal id its running position) and
"absolute_time" (the reference, Qwen2.5-VL: no timestamp text, one block per video, and temporal group
g gets the id start + int(g x seconds per group x `video_tokens_per_second` (2)), so ids follow time).

Model and world: as `ablate_mrope.py` (the main job's model; video_temporal and video_count on the main
job's scenes, 8 frames), trained at one frame rate, 2 fps (4 s videos, 1 s per temporal group). The
held-out evaluation is at 2 fps; extra evaluations use the same 8 frames at 1 fps (`fps1`: 8 s videos,
2 s a group, absolute-time ids step 4 instead of 2, event times up to 7 s) and at 4 fps (`fps4`: 2 s, 0.5 s
a group, ids step 1). The world's `video_fps` sets the rate; the processor's sampling rate is raised to 4
fps so that every frame is kept at every rate (the two arms see the same frames). Temporal accuracy:
|answer - event time| <= 0.5 / fps. The claim is about rates not seen in training: the absolute-time
model must turn id gaps it never saw into seconds, the timestamp model can read them.

Budget (2-core CPU; the main job runs ~0.6 s a step at seq 512 x batch 8, 22.5 GFLOP by the train
loop's count): as `ablate_mrope.py`, 24 videos a step (max_patches 6,144): 22.9 GFLOP with timestamps,
19.3 without their text, ~0.5-0.6 s by the FLOP ratio. A run is ~1 min compile + 900 steps x 0.6 s =
9 min + evaluation (held-out 2 x 400 items, fps1 and fps4 400 each: ~2 min) = ~12 min; 2 arms x 3
seeds = 6 runs = ~72 min (<= 2 h).
"""

from vlm_jax.experiments import common

CLAIM = ("Video timestamps (DIGEST 1, Video: text timestamps): Qwen2.5-VL bound the temporal position id to "
         "absolute time (ids grow huge and sparse for long videos; needs training data at many fps); Qwen3-VL "
         "instead puts a text timestamp before each temporal patch group.")
ARM = "video_time_encoding"
REFERENCE = "absolute_time"
# The claim concerns frame rates the model did not train at; at the training rate it makes none.
EXPECTED = {"timestamps": {"fps*": +1}}
TRAIN_FPS = 2.0
RATES = {"fps1": 1.0, "fps4": 4.0}  # extra eval name -> world video_fps


def _arg(arg):
    return common.parse(arg, video_time_encoding="timestamps")


def get_config(arg=None):
    a = _arg(arg)
    c = common.video_config(a, "ablate_video_time", frames=8, fps=TRAIN_FPS)
    c.model.video_time_encoding = a["video_time_encoding"]  # the pipeline's processor follows (a reference)
    c.data.pipeline.processor.video_fps = max(RATES.values())  # keep every frame at every rate
    return common.finish(c, a)


def sweep(add, arg=None):
    a = _arg(arg)
    for seed in common.seeds(a):
        for encoding in ("absolute_time", "timestamps"):
            add(video_time_encoding=encoding, seed=seed)


def evals(arg=None):
    a = _arg(arg)
    return {name: {"world": {"video_fps": fps}, "tasks": ("temporal",), "num_per_task": common.eval_items(a, 400)}
            for name, fps in RATES.items()}


def metrics(arg=None):
    return ["heldout/temporal", *(f"{name}/temporal" for name in RATES), "heldout/counting"]
