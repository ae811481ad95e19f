"""The synthetic world: a deterministic, infinite, procedurally generated vision-language dataset.

``SyntheticWorld(config).sample(index, split)`` is a pure function of (seed, split, index[, task]):
the random generator is ``np.random.default_rng([seed, crc32(split), crc32(task), index])``,
so any index can be produced directly (random access) in any process.

Splits: ``"train"`` is infinite. Every other split named in ``config.eval_splits`` (default
``eval`` and ``test``, 1000 samples each) is fixed-size and held out: a sample's *plan* (its semantic
content, see ``tasks/``) is hashed into ``config.holdout_buckets`` buckets; bucket 0 belongs to
the held-out splits only and the train split never produces it (rejection with the next attempt).
Train and held-out samples therefore never share a scene / question content, not only a seed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections as mlc
import numpy as np

from vlm_jax.configs.validate import check_keys
from vlm_jax.data.synthetic import render as R
from vlm_jax.data.synthetic import tasks as T

DEFAULT_TASK_WEIGHTS: dict[str, float] = {
    "caption": 1.0,
    "ground_box": 2.0,
    "ground_point": 1.0,
    "count": 2.0,
    "count_boxes": 1.0,
    "count_points": 1.0,
    "ocr": 1.0,
    "chart_value": 1.0,
    "chart_compare": 1.0,
    "geometry": 1.0,
    "spatial": 1.0,
    "multi_image": 1.0,
    "video_temporal": 0.5,
    "video_count": 0.5,
    "thinking": 0.5,
    "text": 1.0,
}

OCR_WORDS = (
    "cat",
    "dog",
    "sun",
    "box",
    "car",
    "map",
    "key",
    "hat",
    "cup",
    "pen",
    "egg",
    "owl",
    "bus",
    "fox",
    "tree",
    "fish",
    "bird",
    "star",
    "moon",
    "cake",
    "lamp",
    "book",
    "door",
    "milk",
    "rain",
    "ship",
    "king",
    "jazz",
    "data",
    "code",
    "gold",
    "wolf",
    "frog",
    "kite",
    "ring",
    "leaf",
    "rose",
    "bell",
    "coin",
    "apple",
    "train",
    "house",
    "water",
    "green",
    "river",
    "light",
    "zebra",
    "piano",
    "robot",
    "cloud",
    "42",
    "2025",
    "7up",
    "h2o",
)


def default_config() -> mlc.ConfigDict:
    """The default (small) world: 64 x 64 images, 4 shapes, 6 colours, counts 1..5, 8-frame videos."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.image_size = (64, 64)  # (height, width) in pixels; multiples of 32 (patch 16 x merge 2)
    c.shapes = ("circle", "square", "triangle", "diamond")  # any of render.SHAPES
    c.colors = ("red", "green", "blue", "yellow", "purple", "orange")  # any of render.COLORS
    c.backgrounds = ("black", "dark gray", "light gray", "white")  # any of render.BACKGROUNDS
    c.object_size = (0.16, 0.32)  # object side, as a fraction of the shorter image side (shrunk to fit)
    c.min_gap = 2  # pixels between objects (objects never touch: one connected component each)
    c.max_objects = 4  # objects in caption / grounding / spatial / difference scenes
    c.min_count = 1  # counting targets per scene
    c.max_count = 5
    c.max_distractors = 3  # non-target objects in counting scenes
    c.color_jitter = 12  # +- per channel on object colours (half of it on backgrounds)
    # Fonts for OCR: "default" = Pillow's bundled font; file names are searched in the system font
    # folders and fall back to "default" when missing (the plan is the same; only pixels differ).
    c.fonts = ("default", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
    c.font_sizes = (11, 22)  # px, shrunk until the word fits
    c.ocr_words = OCR_WORDS
    c.ocr_max_rotation = 10.0  # degrees
    c.chart_bars = (3, 5)
    c.chart_max_value = 9
    c.point_radius = 40  # [0, 1000] units: a geometry point within this distance counts as correct
    c.video_frames = 8
    c.video_fps = 2.0
    c.video_align = True  # events start on even frames (the start of a 2-frame temporal patch group)
    c.video_max_count = 4
    c.eval_splits = mlc.ConfigDict({"eval": 1000, "test": 1000})  # held-out split name -> size
    c.holdout_buckets = 16  # 1/16 of plan space is held out; <= 1 disables content hold-out
    c.max_attempts = 2000
    # Probability that a single-turn question is written before its images instead of after them. With
    # the question first, a causal decoder's visual tokens can read it, so each token can tell whether it
    # shows what is asked about (the answer then pools only those); after the images they cannot.
    c.question_first = 0.0
    # Probability that a grounding scene of several objects has one colour for all of them, so that the
    # named object differs from the others by shape alone (a binding stage for shape; 0 keeps every scene
    # of distinct (shape, colour) pairs, mostly told apart by colour).
    c.shared_color = 0.0
    c.tasks = mlc.ConfigDict(dict(DEFAULT_TASK_WEIGHTS))  # task -> mixture weight
    return c


def _code(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def plan_key(task_family: str, plan: Mapping) -> str:
    """Canonical text of a plan (what the held-out hash is taken of)."""
    return task_family + ":" + json.dumps(plan, sort_keys=True, separators=(",", ":"))


class SyntheticWorld:
    """A procedural vision-language world; see the module docstring.

    ``config`` is a ConfigDict / mapping of keys of ``default_config()`` to override (``tasks``, if
    given, replaces the whole mixture); ``overrides`` are more such keys.
    """

    def __init__(self, config: mlc.ConfigDict | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        cfg = default_config().to_dict()
        given = dict(config.to_dict() if isinstance(config, mlc.ConfigDict) else (config or {}))
        given.update(overrides)
        # Task mixtures and split sizes are keyed by names the user chooses; `_setup` checks them.
        check_keys(given, cfg, "world", partial=True, free=("tasks", "eval_splits"))
        for k, v in given.items():
            if isinstance(v, mlc.ConfigDict):
                v = v.to_dict()
            cfg[k] = dict(v) if isinstance(v, Mapping) else v
        self.config = mlc.FrozenConfigDict(cfg)
        self._setup(cfg)

    def _setup(self, cfg: dict) -> None:
        self.seed = int(cfg["seed"])
        h, w = cfg["image_size"] if not isinstance(cfg["image_size"], int) else (cfg["image_size"],) * 2
        self.height, self.width = int(h), int(w)
        if self.height < 32 or self.width < 32:
            raise ValueError(f"image_size must be >= 32 px, got {(h, w)}")
        self.shapes = tuple(cfg["shapes"])
        self.colors = tuple(cfg["colors"])
        self.backgrounds = tuple(cfg["backgrounds"])
        for name, vals, known in (
            ("shapes", self.shapes, R.SHAPES),
            ("colors", self.colors, R.COLORS),
            ("backgrounds", self.backgrounds, R.BACKGROUNDS),
        ):
            bad = [v for v in vals if v not in known]
            if bad or not vals:
                raise ValueError(f"{name}: unknown or empty {bad}; known: {sorted(known)}")
        self.object_size = tuple(float(x) for x in cfg["object_size"])
        self.min_gap = int(cfg["min_gap"])
        self.max_objects = int(cfg["max_objects"])
        self.min_count, self.max_count = int(cfg["min_count"]), int(cfg["max_count"])
        if not 0 <= self.min_count <= self.max_count:
            raise ValueError("need 0 <= min_count <= max_count")
        self.max_distractors = int(cfg["max_distractors"])
        self.color_jitter = int(cfg["color_jitter"])
        self.fonts = tuple(cfg["fonts"]) or ("default",)
        self.font_sizes = tuple(int(x) for x in cfg["font_sizes"])
        self.ocr_words = tuple(cfg["ocr_words"])
        self.ocr_max_rotation = float(cfg["ocr_max_rotation"])
        self.chart_bars = tuple(int(x) for x in cfg["chart_bars"])
        self.chart_max_value = int(cfg["chart_max_value"])
        self.point_radius = int(cfg["point_radius"])
        self.video_frames = int(cfg["video_frames"])
        self.video_fps = float(cfg["video_fps"])
        self.video_align = bool(cfg["video_align"])
        self.video_max_count = int(cfg["video_max_count"])
        self.eval_splits = {str(k): int(v) for k, v in cfg["eval_splits"].items()}
        if "train" in self.eval_splits:
            raise ValueError("'train' cannot be a held-out split")
        self.holdout_buckets = int(cfg["holdout_buckets"])
        self.max_attempts = int(cfg["max_attempts"])
        self.question_first = float(cfg["question_first"])
        if not 0.0 <= self.question_first <= 1.0:
            raise ValueError(f"question_first is a probability in [0, 1], got {self.question_first}")
        self.shared_color = float(cfg["shared_color"])
        if not 0.0 <= self.shared_color <= 1.0:
            raise ValueError(f"shared_color is a probability in [0, 1], got {self.shared_color}")
        weights = {str(k): float(v) for k, v in cfg["tasks"].items() if float(v) > 0}
        unknown = sorted(set(weights) - set(T.TASKS))
        if unknown or not weights:
            raise ValueError(f"unknown or empty task mixture {unknown}; known tasks: {T.TASKS}")
        self.task_names = tuple(weights)
        total = sum(weights.values())
        self.task_probs = {k: v / total for k, v in weights.items()}
        cum, acc = [], 0.0
        for k in self.task_names:
            acc += weights[k] / total
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum

    # ------------------------------------------------------------------------------------- splits

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names: "train" and the held-out ones."""
        return ("train", *self.eval_splits)

    def split_size(self, split: str) -> int | None:
        """Number of samples of a held-out split; None for the infinite train split."""
        if split == "train":
            return None
        if split not in self.eval_splits:
            raise ValueError(f"unknown split {split!r}; splits: {self.splits}")
        return self.eval_splits[split]

    def is_heldout_plan(self, task_family: str, plan: Mapping) -> bool:
        """Whether a plan belongs to the held-out part of the world (bucket 0 of its hash)."""
        if self.holdout_buckets <= 1:
            return False
        digest = hashlib.blake2b(plan_key(task_family, plan).encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.holdout_buckets == 0

    # ------------------------------------------------------------------------------------ samples

    def sample(self, index: int, split: str = "train", task: str | None = None) -> dict:
        """The sample at ``index`` of ``split`` (of one ``task`` only, if given); deterministic.

        Returns ``{"id", "task", "source", "images", "videos", "messages", "answer", "meta"}``
        (see ``vlm_jax.data.synthetic``).
        """
        index = operator.index(index)
        size = self.split_size(split)
        if index < 0 or (size is not None and index >= size):
            raise IndexError(f"index {index} out of range for split {split!r} (size {size})")
        if task is not None and task not in T.TASKS:
            raise ValueError(f"unknown task {task!r}; known: {T.TASKS}")
        heldout = split != "train"
        # One stream per (seed, split, task, index); rejected attempts simply continue drawing from it.
        rng = np.random.default_rng([self.seed, _code(split), _code(task or ""), index])
        for attempt in range(self.max_attempts):  # noqa: B007 (reported in meta)
            name = task or self.task_names[bisect.bisect_right(self._cum, rng.random())]
            base = T.pick(rng, T.THINKING_BASES) if name == "thinking" else name
            plan = T.PLANS[base](rng, self)
            if plan is None:
                continue
            if (
                self.holdout_buckets > 1
                and self.is_heldout_plan(T.PLAN_FAMILY.get(base, base), plan) != heldout
            ):
                continue
            break
        else:
            raise RuntimeError(
                f"no valid {task or 'mixture'} sample for {split}[{index}] in {self.max_attempts} tries"
            )
        parts = T.BUILDS[base](plan, rng, self)
        content: list[dict] = [{"type": m} for m in parts["media"]]
        question = {"type": "text", "text": parts["question"]}
        if self._question_first(split, task, index):
            content.insert(0, question)
        else:
            content.append(question)
        reply: dict = {"role": "assistant", "content": parts["answer_text"]}
        if name == "thinking":
            reply["reasoning"] = parts["reasoning"]
        meta = dict(parts["meta"])
        meta.update(split=split, index=index, attempt=attempt, base_task=base, plan=plan)
        return {
            "id": f"syn-s{self.seed}-{split}-{task or 'mix'}-{index:08d}",
            "task": name,
            "source": "synthetic",
            "images": parts["images"],
            "videos": parts["videos"],
            "messages": [{"role": "user", "content": content}, reply],
            "answer": parts["answer"],
            "meta": meta,
        }

    def _question_first(self, split: str, task: str | None, index: int) -> bool:
        # Its own stream, so the order never changes which plan or pixels a sample gets.
        if self.question_first <= 0.0 or self.question_first >= 1.0:
            return self.question_first >= 1.0
        rng = np.random.default_rng([self.seed, _code(split), _code(task or ""), index, _code("question_first")])
        return bool(rng.random() < self.question_first)

    def samples(
        self, split: str = "train", n: int | None = None, start: int = 0, task: str | None = None
    ) -> Iterator[dict]:
        """Samples ``start .. start + n - 1`` of a split (n=None: to the end; forever for train)."""
        size = self.split_size(split)
        stop = start + n if n is not None else size
        i = start
        while stop is None or i < stop:
            yield self.sample(i, split, task)
            i += 1

    def text_corpus(self, n: int, split: str = "train") -> Iterator[str]:
        """Texts of ``n`` samples (questions, answers, reasoning), e.g. to train a tokenizer."""
        for s in self.samples(split, n):
            for m in s["messages"]:
                c = m["content"]
                if isinstance(c, str):
                    yield c
                else:
                    yield from (it["text"] for it in c if it["type"] == "text")
                if m.get("reasoning"):
                    yield m["reasoning"]

    def __repr__(self) -> str:
        return (
            f"SyntheticWorld(seed={self.seed}, image={self.height}x{self.width}, "
            f"tasks={len(self.task_names)}, eval_splits={self.eval_splits})"
        )


class SyntheticSource:
    """A grain ``RandomAccessDataSource`` over one split of a world (optionally one task only).

    ``length`` is required for the infinite train split; for held-out splits it defaults to (and may
    not exceed) the split size.
    """

    def __init__(
        self, world: SyntheticWorld, split: str = "train", length: int | None = None, task: str | None = None
    ) -> None:
        size = world.split_size(split)
        if length is None:
            if size is None:
                raise ValueError("the train split is infinite: give a length")
            length = size
        if length < 0 or (size is not None and length > size):
            raise ValueError(f"length {length} out of range for split {split!r} of size {size}")
        self.world, self.split, self.length, self.task = world, split, int(length), task

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range [0, {self.length})")
        return self.world.sample(index, self.split, self.task)

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(split={self.split!r}, length={self.length}, task={self.task!r}, "
            f"world={self.world})"
        )
