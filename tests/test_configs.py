"""The one config key checker (`vlm_jax.configs.validate`) and the configs that use it."""

from __future__ import annotations

import ml_collections as mlc
import pytest

from vlm_jax.configs import experiment, synthetic_tiny
from vlm_jax.configs.validate import check_keys, merge, unflatten
from vlm_jax.data import processor
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.inference import sampling
from vlm_jax.train import data as data_lib


def _ref() -> mlc.ConfigDict:
    return mlc.ConfigDict({"a": 1, "sub": {"x": 1.0, "y": "s"}, "names": {"default": 1}})


def test_check_keys_names_the_full_dotted_key():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) cfg\.sub\.z; valid keys of cfg\.sub: x, y$"):
        check_keys({"a": 1, "sub": {"x": 1.0, "y": "s", "z": 0}, "names": {}}, _ref(), "cfg", free=("names",))
    with pytest.raises(ValueError, match=r"missing config key\(s\) cfg\.sub\.y$"):
        check_keys({"a": 1, "sub": {"x": 1.0}, "names": {}}, _ref(), "cfg", free=("names",))
    with pytest.raises(ValueError, match=r"cfg\.sub must be a mapping"):
        check_keys({"sub": 3}, _ref(), "cfg", partial=True)
    check_keys({"sub": {"x": 2.0}}, _ref(), "cfg", partial=True)  # a subset is fine when partial
    with pytest.raises(ValueError, match=r"cfg\.names\.mine"):  # not free: checked like any sub-config
        check_keys({"names": {"mine": 2}}, _ref(), "cfg", partial=True)
    check_keys({"names": {"mine": 2}}, _ref(), "cfg", partial=True, free=("names",))


def test_merge_is_key_by_key_and_type_safe():
    c = merge(_ref(), {"sub": {"x": 2}, "names": {"mine": 2}}, "cfg", free=("names",))
    assert c.sub.x == 2.0 and c.sub.y == "s"  # merged into, the other key kept
    assert c.names.to_dict() == {"mine": 2}  # free: replaced whole
    with pytest.raises(ValueError, match=r"cfg\.sub\.y: .*bool"):
        merge(_ref(), {"sub": {"y": True}}, "cfg")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) cfg\.b;"):
        merge(_ref(), {"b": 1}, "cfg")
    assert merge(_ref(), None, "cfg") == _ref()


def test_unflatten():
    assert unflatten({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(ValueError, match="'a.b'"):
        unflatten({"a": 1, "a.b": 2})


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.eval.unlock().update(foo=1), r"config\.eval\.foo"),
    (lambda c: c.log.unlock().__delitem__("every_steps"), r"missing config key\(s\) config\.log\.every_steps"),
    (lambda c: c.model.text.unlock().update(bogus=1), r"config\.model\.text\.bogus"),
    (lambda c: c.train.optimizer.unlock().update(lr=1.0), r"config\.train\.optimizer\.lr"),
    (lambda c: c.data.pipeline.unlock().update(seq_lenn=1), r"data\.pipeline\.seq_lenn"),
    (lambda c: c.data.pipeline.processor.unlock().update(max_pixelz=1), r"data\.pipeline\.processor\.max_pixelz"),
    (lambda c: c.data.sources.synthetic.unlock().update(paths="x"), r"data\.sources\.synthetic\.paths"),
    (lambda c: c.data.sources.synthetic.world.update(bogus=1), r"data\.sources\.synthetic\.world\.bogus"),
])
def test_experiment_unknown_or_missing_key_fails_naming_it(edit, message):
    c = synthetic_tiny.get_config()
    experiment.validate(c)
    edit(c)
    with pytest.raises(ValueError, match=message):
        experiment.validate(c)


def test_experiment_pipeline_is_the_pipeline_config():
    c = synthetic_tiny.get_config()
    pc = data_lib.pipeline_config(c.data, seed=7, weights=None)
    assert pc.seed == 7  # None in the experiment: the train seed
    assert (pc.seq_len, pc.worker_count, pc.processor.max_pixels) == (512, 0, 64 * 64)
    c.data.pipeline.seed = 3
    assert data_lib.pipeline_config(c.data, seed=7, weights=None).seed == 3
    c.data.pipeline.processor.patch_size = 14  # derived processor keys follow
    saved = experiment.processor_config(c)
    assert saved["patch_dim"] == 3 * 2 * 14 * 14
    assert processor.get_config(saved) == data_lib.pipeline_config(c.data, 0, None).processor


def test_experiment_processor_follows_the_model_merger():
    c = synthetic_tiny.get_config()
    c.model.update(merger="resampler", resampler_num_queries=64, deepstack=False)
    experiment.validate(c)
    pc = data_lib.pipeline_config(c.data, seed=0, weights=None).processor
    assert (pc.merger, pc.resampler_num_queries) == ("resampler", 64)  # placeholders per image: the model's
    assert experiment.processor_config(c)["merger"] == "resampler"  # and so the exported processor_config.json
    d = mlc.ConfigDict(c.to_dict())  # a copy without the link, changed on the model side only
    d.model.resampler_num_queries = 144
    with pytest.raises(ValueError, match=r"processor\.resampler_num_queries=64 differs from "
                                         r"config\.model\.resampler_num_queries=144"):
        experiment.validate(d)


def test_train_overrides_name_unknown_keys():
    train = experiment.train_config(synthetic_tiny.get_config())
    assert experiment.with_overrides(train, {"loss.num_tasks": 3}).loss.num_tasks == 3
    with pytest.raises(ValueError, match=r"config\.train\.loss\.num_task;"):
        experiment.with_overrides(train, {"loss.num_task": 3})


def test_world_and_sampling_keys_go_through_the_validator():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) world\.max_object;"):
        SyntheticWorld(max_object=3)
    assert SyntheticWorld(tasks={"count": 1.0}).task_names == ("count",)  # free: task names are the world's
    with pytest.raises(ValueError, match=r"unknown config key\(s\) sampling\.temp;"):
        sampling.get_preset("greedy", temp=0.5)
