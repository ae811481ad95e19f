"""Learning regression: a short training on a fixed set of counting images must read the pixels.

The model is the main job's tiny config cut to two tower and two decoder layers, with the main
job's learning rates; the task is the synthetic world's counting (how many <category> are there?)
on a fixed set of samples. With the real images, teacher-forced answer accuracy on that set must
pass a threshold that the control cannot reach: the same training from the same initial weights
with every image replaced by fresh noise at every step (so the pixels carry no information, and
only the question's prior is learnable). Measured: images 0.90 at step 40 and 1.0 from step 60;
noise 0.38-0.50 through step 120.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from vlm_jax.configs import experiment as experiment_lib
from vlm_jax.configs.synthetic_tiny import get_config
from vlm_jax.parallel import make_mesh
from vlm_jax.train import data as data_lib
from vlm_jax.train import vision_probe
from vlm_jax.train.state import init_train_state
from vlm_jax.train.step import CPU_FAST_COMPILE, make_train_step, put_batch

NUM_SAMPLES = 40
STEPS = 60
THRESHOLD = 0.85  # answer accuracy on the fixed set; the noise control reaches about 0.5


def _config() -> mlc.ConfigDict:
    c = get_config()
    world = dict(c.data.sources.synthetic.world)
    # One shape and one colour: the question then names one of a dozen phrasings, each asked of
    # several counts, so the question text cannot identify a sample (the noise control could
    # otherwise memorise answers from text alone).
    world.update(tasks={"count": 1.0}, shapes=("circle",), colors=("red",), max_distractors=0)
    c.data.sources.synthetic.world = world
    c.data.sources.synthetic.length = NUM_SAMPLES
    c.data.pipeline.update(seq_len=256, batch_size=2, max_patches=512, max_grids=32, shuffle=False, num_epochs=1)
    c.train.optimizer.update(warmup_steps=5, schedule="constant")
    # 16-pixel patches (4 visual tokens an image): the cheapest tower that still has to read the pixels.
    c.model.vision.patch_size = 16
    c.data.pipeline.processor.patch_size = 16
    # Two layers each (DeepStack from the first tower layer): half the compile and step time of `tiny`.
    c.model.vision.update(depth=2, deepstack_layers=(0,), full_attention_layers=(0, 1))
    c.model.text.num_layers = 2
    experiment_lib.validate(c)
    return c


@pytest.fixture(scope="module")
def fixed_set():
    c = _config()
    pipe, _, _ = data_lib.make_pipeline(c.data, seed=0)
    batches = list(iter(pipe))
    n = sum(len(vision_probe.answer_accuracy(np.zeros((*b["targets"].shape, 2)), b)) for b in batches)
    assert n == NUM_SAMPLES, f"the fixed set packs {n} samples, expected {NUM_SAMPLES}"
    return c, batches


@pytest.fixture(scope="module")
def trainer(fixed_set):
    """One initial state, one compiled train step and one compiled scorer, shared by both runs."""
    c, _ = fixed_set
    mc, tc = experiment_lib.model_config(c), experiment_lib.train_config(c)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    init = init_train_state(mc, tc, mesh)
    step = make_train_step(mc, tc, mesh, compiler_options=CPU_FAST_COMPILE)
    return mesh, init, step, vision_probe.make_answer_logprob_fn(mc)


def _train_and_score(trainer, batches, noise: bool) -> float:
    mesh, init, step, logprob = trainer
    state = jax.tree.map(jnp.copy, init)  # the step donates its state
    rng = np.random.default_rng(0)

    def maybe_noise(b):
        if not noise:
            return b
        return {**b, "pixel_values": rng.normal(size=b["pixel_values"].shape).astype(np.float32)}

    for i in range(STEPS):
        state, _ = step(state, put_batch(maybe_noise(batches[i % len(batches)]), mesh))
    correct = []
    for b in batches:
        _, logits = logprob(state.params, maybe_noise(b))
        correct += list(vision_probe.answer_accuracy(jax.device_get(logits), b).values())
    return float(np.mean(correct))


def test_counting_is_learned_from_pixels_and_not_from_noise(fixed_set, trainer):
    _, batches = fixed_set
    t0 = time.perf_counter()
    with_images = _train_and_score(trainer, batches, noise=False)
    with_noise = _train_and_score(trainer, batches, noise=True)
    print(f"fixed-set answer accuracy: images {with_images:.3f}, noise {with_noise:.3f} "
          f"({time.perf_counter() - t0:.0f} s)")
    assert with_images >= THRESHOLD, f"counting not learned from the images: accuracy {with_images:.3f}"
    assert with_noise < THRESHOLD, f"the noise control reached {with_noise:.3f}: the test does not need vision"
