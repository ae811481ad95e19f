"""Evaluation task families: which metric scores an item, and where items come from.

A family groups items scored the same way:

    grounding        ground_box                         box IoU >= 0.5 (and mean IoU)
    pointing         ground_point, geometry             point inside the object's box / within the radius
    counting         count, count_points, count_boxes,  exact count
                     video_count
    ocr              ocr                                exact text (and character error rate)
    caption          caption                            token F1
    temporal         video_temporal                     event time within the answer's tolerance
                                                        (`metrics.time_tolerance`)
    multiple_choice  multi_image ("which image ..."),   the chosen option (letter or option text)
                     chart_compare
    chart            chart_value                        exact value
    spatial          spatial                            text / yes-no match
    text             text                               exact value / text match

Items come from the synthetic world's held-out splits (`synthetic_items`: by default the whole split,
i.e. every index of each of the family's tasks, `config.eval_splits` (1000 per task by default), else
the first n, interleaved across tasks: deterministic) or from a JSONL file in the `write_jsonl` format with
reference answers (`jsonl_items`; the family comes from the record's task, else its answer keys;
multiple-choice records carry `answer["options"]` and `answer["choice"]` (letter / index) or
`answer["text"]` (the option)).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm_jax.data.synthetic import SyntheticWorld, read_jsonl, sample_to_record
from vlm_jax.eval import metrics


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    metric: str  # the headline metric's name in reports
    synthetic_tasks: tuple[str, ...]
    needs: tuple[tuple[str, ...], ...]  # answer must hold all keys of one of these groups
    proportion: bool = True  # per-item scores are 0 / 1 (Wilson interval); False: a continuous mean


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("grounding", "acc@iou0.5", ("ground_box",), (("bbox_2d",),)),
    Family("pointing", "acc", ("ground_point", "geometry"), (("point_2d",),)),
    Family("counting", "exact", ("count", "count_points", "count_boxes", "video_count"), (("count",),)),
    Family("ocr", "exact", ("ocr",), (("text",),)),
    Family("caption", "f1", ("caption",), (("text",),), proportion=False),
    Family("temporal", "acc", ("video_temporal",), (("time",),)),
    Family("multiple_choice", "acc", ("multi_image", "chart_compare"), (("options", "choice"), ("options", "text"))),
    Family("chart", "exact", ("chart_value",), (("value",),)),
    Family("spatial", "acc", ("spatial",), (("text",), ("value",))),
    Family("text", "acc", ("text",), (("value",), ("text",))),
)}
# Synthetic task -> family (the first family listing it).
TASK_FAMILY: dict[str, str] = {}
for _f in FAMILIES.values():
    for _t in _f.synthetic_tasks:
        TASK_FAMILY.setdefault(_t, _f.name)


def check_task_names(names: Iterable[str]) -> list[str]:
    """The names as a list; ValueError listing the valid families if one is unknown."""
    names = list(names)
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown eval task(s) {bad}; valid tasks: {', '.join(FAMILIES)}")
    return names


def accepts(family: str, answer: Mapping) -> bool:
    """Whether `answer` has the keys the family's metric needs."""
    return any(all(k in answer for k in group) for group in FAMILIES[family].needs)


def score_item(family: str, answer: Mapping, reply: str) -> metrics.Score:
    """The family's metric of one reply (the final answer text) against the ground truth `answer`."""
    if family == "grounding":
        return metrics.box_accuracy(reply, answer["bbox_2d"])
    if family == "pointing":
        if "bbox_2d" in answer:
            return metrics.point_in_box(reply, answer["bbox_2d"])
        return metrics.point_within(reply, answer["point_2d"], float(answer.get("radius", metrics.POINT_RADIUS)))
    if family == "counting":
        return metrics.count_exact(reply, answer["count"])
    if family == "ocr":
        return metrics.ocr_exact(reply, str(answer["text"]))
    if family == "caption":
        return metrics.token_f1(reply, str(answer["text"]))
    if family == "temporal":
        return metrics.time_within(reply, answer["time"], metrics.time_tolerance(answer))
    if family == "multiple_choice":
        return metrics.multiple_choice(reply, answer["options"], answer.get("choice", answer.get("text")))
    if family == "chart" or "value" in answer:
        return metrics.value_exact(reply, answer["value"])
    if family in ("spatial", "text"):
        return metrics.text_match(reply, str(answer["text"]))
    raise ValueError(f"unknown eval task {family!r}; valid tasks: {', '.join(FAMILIES)}")


# ----------------------------------------------------------------------------- items


@dataclasses.dataclass
class EvalItem:
    """One evaluation question. messages: the prompt (the conversation without the reference reply);
    images / videos as in a synthetic sample; answer: the ground truth (scoring keys); reference: the
    reference reply text; task: the source task (synthetic task or the record's)."""

    id: str
    family: str
    messages: list[dict]
    images: list[np.ndarray]
    videos: list[dict]
    answer: dict
    reference: str = ""
    task: str = ""
    meta: dict = dataclasses.field(default_factory=dict)

    def to_sample(self) -> dict:
        """The item as a synthetic-format sample (reference reply as the assistant turn)."""
        return {"id": self.id, "task": self.task or self.family, "source": "eval", "images": self.images,
                "videos": self.videos, "answer": self.answer, "meta": self.meta,
                "messages": [*self.messages, {"role": "assistant", "content": self.reference}]}


def synthetic_options(task: str, plan: Mapping) -> list[str] | None:
    """Answer options of a synthetic choice question (from its plan), or None if it is not one."""
    if task == "multi_image" and plan.get("kind") == "more":
        return ["first", "second"]
    if task == "chart_compare":
        q, colors = plan.get("q"), list(plan.get("colors", ()))
        if q == "yesno":
            return ["yes", "no"]
        if q == "pair":
            return [colors[i] for i in plan["pair"]]
        if colors:
            return colors
    return None


def family_of(task: str, answer: Mapping, meta: Mapping | None = None) -> str:
    """The family of a record: its task (a family, or a synthetic task whose family fits the answer),
    else the answer's keys. ValueError when nothing fits."""
    if task in FAMILIES and accepts(task, answer):
        return task
    base = (meta or {}).get("base_task", task) if task == "thinking" else task
    if base in TASK_FAMILY and accepts(TASK_FAMILY[base], answer):
        return TASK_FAMILY[base]
    by_key = (("options", "multiple_choice"), ("bbox_2d", "grounding"), ("point_2d", "pointing"),
              ("count", "counting"), ("time", "temporal"), ("value", "chart"), ("text", "text"))
    for key, family in by_key:
        if key in answer and accepts(family, answer) and not (family == "grounding" and "point_2d" in answer):
            return family
    raise ValueError(f"task {task!r} with answer keys {sorted(answer)} fits no eval task; "
                     f"valid tasks: {', '.join(FAMILIES)}")


def item_from_sample(sample: Mapping, family: str | None = None) -> EvalItem:
    """An `EvalItem` from a synthetic-format sample (its last assistant turn is the reference).

    Synthetic choice questions get `answer["options"]` from their plan."""
    answer = dict(sample.get("answer") or {})
    meta = dict(sample.get("meta") or {})
    task = str(sample.get("task", ""))
    base = meta.get("base_task", task) if task == "thinking" else task
    if "options" not in answer:
        options = synthetic_options(base, meta.get("plan") or {})
        if options is not None:
            answer["options"] = options
    messages = list(sample["messages"])
    reference = ""
    if messages and messages[-1].get("role") == "assistant":
        reference = messages.pop()["content"]
        reference = reference if isinstance(reference, str) else ""
    family = family or family_of(task, answer, meta)
    if not accepts(family, answer):
        raise ValueError(f"sample {sample.get('id')!r}: answer keys {sorted(answer)} do not fit task {family!r}")
    if family == "multiple_choice":  # a reference outside the options would only fail after generation
        metrics.choice_index(answer.get("choice", answer.get("text")), answer["options"])
    return EvalItem(id=str(sample.get("id", "")), family=family, messages=copy.deepcopy(messages),
                    images=list(sample.get("images") or []), videos=list(sample.get("videos") or []),
                    answer=answer, reference=reference, task=task, meta=meta)


def task_items(world: SyntheticWorld, split: str, family: str, task: str, limit: int | None = None
               ) -> Iterator[EvalItem]:
    """Items of one synthetic task, in index order, keeping samples that fit the family; the first
    `limit` indices (default: the whole held-out split; required for "train")."""
    size = world.split_size(split)
    if limit is None and size is None:
        raise ValueError("the train split is infinite: give a limit")
    for i in range(size if limit is None else min(limit, size or limit)):
        item = item_from_sample(world.sample(i, split, task=task), family=None)
        if item.family == family:
            yield item


def family_tasks(family: str, world: SyntheticWorld) -> tuple[str, ...]:
    """The family's synthetic tasks that `world` generates (positive mixture weight); all of them
    when the world trains none, so a family is never scored on tasks its model never saw."""
    weights = world.config.tasks
    trained = tuple(t for t in FAMILIES[family].synthetic_tasks if weights.get(t, 0) > 0)
    return trained or FAMILIES[family].synthetic_tasks


def synthetic_items(family: str, n: int | None = None, *, split: str = "eval", world: SyntheticWorld | None = None
                    ) -> list[EvalItem]:
    """The first `n` held-out items of a family (None: all of them, the whole split), interleaving its
    synthetic tasks that the world trains (`family_tasks`; deterministic). Fewer when the split holds
    fewer fitting samples."""
    check_task_names([family])
    world = world or SyntheticWorld()
    if split == "train":
        raise ValueError("evaluate on a held-out split (e.g. 'eval' or 'test'), not 'train'")
    world.split_size(split)  # ValueError for an unknown split
    streams = [task_items(world, split, family, t) for t in family_tasks(family, world)]
    items = (it for group in itertools.zip_longest(*streams) for it in group if it is not None)
    return list(itertools.islice(items, n))


def check_num_per_task(n: int | None) -> int | None:
    """`n` items per task, None (or 0, as configs spell it) for all of them; ValueError if negative."""
    if n is not None and n < 0:
        raise ValueError(f"items per task must be >= 0 (0 or None: the whole split), got {n}")
    return n or None


def jsonl_items(path: str | os.PathLike, families: Sequence[str] | None = None, n: int | None = None
                ) -> list[EvalItem]:
    """Items of a JSONL file (`write_jsonl` format with `answer`), optionally only `families`, at most
    `n` per family. FileNotFoundError / ValueError name the file and the record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    keep = set(check_task_names(families)) if families else None
    counts: dict[str, int] = {}
    out = []
    records = read_jsonl(path)
    for k in itertools.count():
        try:
            sample = next(records, None)
            if sample is None:
                return out
            if not sample.get("answer"):
                raise ValueError(f"no 'answer' (reference) to score against in record {sample.get('id')!r}")
            item = item_from_sample(sample)
        except (KeyError, TypeError, OSError, ValueError) as e:  # JSON errors are ValueErrors
            raise ValueError(f"{path}, record {k + 1}: {e}") from e
        if (keep is None or item.family in keep) and (n is None or counts.get(item.family, 0) < n):
            counts[item.family] = counts.get(item.family, 0) + 1
            out.append(item)
    return out


def load_items(families: Sequence[str] | None, *, split: str = "eval", num_per_task: int | None = None,
               world: SyntheticWorld | None = None, world_config: Mapping[str, Any] | None = None,
               jsonl: str | os.PathLike | None = None) -> list[EvalItem]:
    """Items of `families`: from `jsonl` when given (None = every family in the file), else the synthetic
    world's held-out `split` (`world`, or one built from `world_config` overrides); at most `num_per_task`
    per family (None or 0: all, the whole split or file)."""
    num_per_task = check_num_per_task(num_per_task)
    if jsonl is not None:
        return jsonl_items(jsonl, families, num_per_task)
    families = check_task_names(families or ())
    if not families:
        raise ValueError(f"no eval tasks given; valid tasks: {', '.join(FAMILIES)}")
    world = world or SyntheticWorld(world_config or {})
    return [it for f in families for it in synthetic_items(f, num_per_task, split=split, world=world)]


def vision_off_donors(items: Sequence[EvalItem]) -> list[int]:
    """For each item, the index of the item whose images / videos it gets in the vision-off control.

    Items are grouped by (family, number of images, number of videos), so every prompt keeps its
    placeholders and its kind of media, and the swapped-in media come from the same task's items;
    inside a group (in item order) item k gets the media of the next item, the last one those of the
    first (a rotation: no item keeps its own media when the group holds two or more). A group of one
    item keeps its own media (`donor == k`)."""
    groups: dict[tuple, list[int]] = {}
    for k, it in enumerate(items):
        groups.setdefault((it.family, len(it.images), len(it.videos)), []).append(k)
    donors = list(range(len(items)))
    for members in groups.values():
        for j, k in enumerate(members):
            donors[k] = members[(j + 1) % len(members)]
    return donors


def vision_off_items(items: Sequence[EvalItem], donors: Sequence[int] | None = None) -> list[EvalItem]:
    """The items with their media replaced by their donors' (`vision_off_donors`); question, answer
    and reference stay. A model that answers these as well as the originals is not using the image."""
    donors = vision_off_donors(items) if donors is None else donors
    if sorted(donors) != list(range(len(items))):
        raise ValueError(f"donors must be a permutation of range({len(items)})")
    return [dataclasses.replace(it, images=list(items[d].images), videos=list(items[d].videos))
            for it, d in zip(items, donors)]


def write_items_jsonl(items: Sequence[EvalItem], out_dir: str | os.PathLike, filename: str = "items.jsonl") -> Path:
    """Writes items as `write_jsonl` records (media as PNG files under `out_dir`); `jsonl_items` reads them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(sample_to_record(it.to_sample(), out), ensure_ascii=False) + "\n")
    return path
