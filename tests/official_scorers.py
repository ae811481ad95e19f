"""The reference scorers of the public benchmarks, where a pip-installable package ships them: lmms-eval's
task files (`pip install lmms-eval --no-deps` is enough). Each file is loaded on its own from the
installed package, its heavy imports (loguru, sacrebleu, the task registry) replaced by stubs, so the
comparison needs none of lmms-eval's dependencies. `load` skips the calling test when lmms-eval is absent.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _stub_modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    logger = types.SimpleNamespace(info=print, warning=print, debug=print, error=print)
    identity = lambda *a, **k: (lambda f: f)  # noqa: E731  (decorator factories of the registry)
    return {
        "loguru": module("loguru", logger=logger),
        "sacrebleu": module("sacrebleu"),
        "lmms_eval.api.registry": module("lmms_eval.api.registry", register_metric=identity,
                                         register_aggregation=identity),
        "lmms_eval.tasks._task_utils.file_utils": module("lmms_eval.tasks._task_utils.file_utils",
                                                         generate_submission_file=lambda *a, **k: "/dev/null"),
    }


def load(relative: str) -> types.ModuleType:
    """The module at lmms_eval/<relative> (e.g. "tasks/chartqa/utils.py"), loaded in isolation."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lmms-eval is not installed (pip install lmms-eval --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        pytest.skip(f"this lmms-eval has no {relative}")
    stubs = {k: v for k, v in _stub_modules().items() if k not in sys.modules}
    sys.modules.update(stubs)
    try:
        mod_spec = importlib.util.spec_from_file_location(f"_official_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    finally:
        for k in stubs:
            sys.modules.pop(k, None)
