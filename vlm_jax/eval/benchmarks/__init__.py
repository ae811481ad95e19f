"""Public benchmarks in the layouts their datasets ship, with the prompts and metrics of their reference
evaluations:

    python -m vlm_jax.eval --benchmark=docvqa --data=DIR --ckpt=CKPT [--num=100] [--out=DIR]

    name          layouts read (see each reader)                    metric
    refcoco       lmms-lab parquet; Qwen-VL/InternVL JSON(L)         acc@IoU 0.5 of the first box (+ mean IoU)
    refcoco+      (same reader as refcoco)
    refcocog      (same reader as refcoco)
    countbench    CountBenchQA parquet / JSON(L)                     exact match, the whole reply
    pixmo_count   lmms-lab or allenai parquet / JSON(L)              exact match, the first integer
    docvqa        lmms-lab parquet; official JSON                    ANLS
    infovqa       lmms-lab parquet; official JSON                    ANLS
    chartqa       lmms-lab parquet; official JSON + png/             relaxed accuracy (5%), per split
    ocrbench      Hugging Face parquet; official JSON                per-category substring match, Final Score
    mmmu          MMMU parquet; VLMEvalKit TSV                       option accuracy
    mmbench       VLMEvalKit TSV; lmms-lab parquet                   circular option accuracy
    mmstar        Lin-Chen parquet; VLMEvalKit TSV                   option accuracy
    videomme      lmms-lab parquet + videos                          option accuracy (per duration)
    charades_sta  official txt; lmms-lab JSON / parquet + videos     mIoU, R@IoU 0.3 / 0.5 / 0.7

`get(name)` gives a `Benchmark`; `run.load_items`, `run.evaluate` and `run.score_replies` run one.
Each Benchmark names where its prompt and metric come from (`prompt_source`, `metric_source`).
"""

from __future__ import annotations

from vlm_jax.eval.benchmarks import choice, counting, documents, grounding, temporal
from vlm_jax.eval.benchmarks.spec import Benchmark, Item, ReadOptions

__all__ = ["BENCHMARKS", "Benchmark", "Item", "ReadOptions", "get"]

_QWEN3_REPORT = "Qwen3-VL technical report (arXiv 2511.21631), appendix B: the RefCOCO grounding prompt"
_VLMEVAL_VQA = "VLMEvalKit vlmeval/vlm/qwen3_vl/prompt.py (Qwen3-VL's prompt for VQA-type datasets)"
_VLMEVAL_MCQ = "VLMEvalKit vlmeval/vlm/qwen3_vl/prompt.py (Qwen3-VL's prompt for multiple-choice datasets)"
_MC_METRIC = ("accuracy of the option letter extracted by the rules of QwenLM/Qwen3-VL evaluation/*/eval_utils.py "
              "(VLMEvalKit's can_infer); no LLM-judge fallback: an unreadable reply scores 0")


def _refcoco(name: str) -> Benchmark:
    return Benchmark(name, "grounding", grounding.read, grounding.score, "acc@iou0.5", _QWEN3_REPORT,
                     "acc@IoU 0.5 of the first predicted box (Qwen-VL eval_mm/evaluate_grounding.py)",
                     max_new_tokens=128, summarize=grounding.summarize)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    _refcoco("refcoco"), _refcoco("refcoco+"), _refcoco("refcocog"),
    Benchmark("countbench", "counting", counting.read_countbench, counting.score_countbench, "exact",
              "lmms-eval tasks/countbench (no Qwen3-VL prompt is public)",
              "exact match of the whole reply, number words read as numerals (lmms-eval tasks/countbench)",
              max_new_tokens=16),
    Benchmark("pixmo_count", "counting", counting.read_pixmo_count, counting.score_pixmo_count, "exact",
              "lmms-eval tasks/pixmo_count (no Qwen3-VL prompt is public)",
              "exact match of the reply's first integer (lmms-eval tasks/pixmo_count)", max_new_tokens=32),
    Benchmark("docvqa", "text", documents.read_docvqa, documents.score_anls, "anls", _VLMEVAL_VQA,
              "ANLS, threshold 0.5 (RRC DocVQA evaluation; Qwen-VL eval_mm/infographicsvqa_eval.py)",
              proportion=False, max_new_tokens=64),
    Benchmark("infovqa", "text", documents.read_docvqa, documents.score_anls, "anls", _VLMEVAL_VQA,
              "ANLS, threshold 0.5 (RRC InfographicVQA evaluation; Qwen-VL eval_mm/infographicsvqa_eval.py)",
              proportion=False, max_new_tokens=64),
    Benchmark("chartqa", "chart", documents.read_chartqa, documents.score_chartqa, "relaxed_acc", _VLMEVAL_VQA,
              "relaxed accuracy, 5% relative tolerance (pix2struct; Qwen-VL eval_mm/evaluate_vqa.py)",
              max_new_tokens=32, summarize=documents.summarize_chartqa),
    Benchmark("ocrbench", "ocr", documents.read_ocrbench, documents.score_ocrbench, "acc", _VLMEVAL_VQA,
              "OCRBench's official per-dataset substring match; Final Score = right answers (of 1000)",
              max_new_tokens=128, summarize=documents.summarize_ocrbench),
    Benchmark("mmmu", "multiple_choice", choice.read_mmmu, choice.score, "acc",
              "QwenLM/Qwen3-VL evaluation/mmmu/run_mmmu.py", _MC_METRIC, max_new_tokens=32,
              summarize=choice.summarize_by_category),
    Benchmark("mmbench", "multiple_choice", choice.read_mmbench, choice.score, "circular_acc", _VLMEVAL_MCQ,
              _MC_METRIC + "; circular: a question counts only if all its rotations are right (MMBench)",
              max_new_tokens=16, headline=choice.circular_groups, summarize=choice.summarize_mmbench),
    Benchmark("mmstar", "multiple_choice", choice.read_mmstar, choice.score, "acc", _VLMEVAL_MCQ, _MC_METRIC,
              max_new_tokens=16, summarize=choice.summarize_by_category),
    Benchmark("videomme", "multiple_choice", choice.read_videomme, choice.score, "acc",
              "QwenLM/Qwen3-VL evaluation/VideoMME/dataset_utils.py (without subtitles)", _MC_METRIC,
              max_new_tokens=16, summarize=choice.summarize_videomme),
    Benchmark("charades_sta", "temporal", temporal.read, temporal.score, "mIoU",
              "lmms-eval tasks/charades_sta (no Qwen3-VL prompt is public)",
              "R@IoU 0.3 / 0.5 / 0.7 and mIoU of the reply's span (lmms-eval tasks/charades_sta/eval_tvg.py)",
              proportion=False, max_new_tokens=64, summarize=temporal.summarize),
)}


def get(name: str) -> Benchmark:
    """The benchmark called `name`; ValueError listing the known ones otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
