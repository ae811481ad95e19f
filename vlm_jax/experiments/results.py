"""Statistics over the seeds of a sweep and its Markdown report (pure functions, no training).

Each arm's score is the mean over its seeds with the sample standard deviation (ddof = 1). An arm is
compared with the reference arm by the difference arm - reference and its 95% interval:

- seed-paired (both arms ran exactly the same seeds, n >= 2): the t-interval of the per-seed
  differences, mean(d) +- t(0.975, n - 1) * sd(d) / sqrt(n). A seed fixes the init and the data
  order, and every run is scored on the same held-out items, so pairing removes what seeds share;
- otherwise Welch: (mean_a - mean_r) +- t(0.975, df) * sqrt(s_a^2 / n_a + s_r^2 / n_r), df by
  Welch-Satterthwaite.

Fewer than two seeds on a side leave the interval undefined (NaN bounds, method "n/a").
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
# Metric names whose last part ends so are better when lower (times, losses, error rates).
LOWER_IS_BETTER = ("_ms", "seconds", "loss", "cer", "malformed_rate", "collapsed")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A difference (arm - reference) with its 95% interval; n: seed pairs (paired) or n_arm + n_ref
    (Welch); df: degrees of freedom of the t quantile; method: "paired", "welch" or "n/a"."""

    value: float
    low: float
    high: float
    n: int
    df: float
    method: str

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def contains_zero(self) -> bool:
        return self.defined and self.low <= 0.0 <= self.high

    def format(self) -> str:
        """'+0.030 [-0.010, +0.070]' ('-' for undefined parts)."""
        return f"{fmt(self.value, signed=True)} [{fmt(self.low, signed=True)}, {fmt(self.high, signed=True)}]"


def fmt(x: float | None, signed: bool = False) -> str:
    """A number for a table: 3 decimals (1 from 100 on), '-' when missing or not finite."""
    if x is None or not math.isfinite(x):
        return "-"
    digits = 1 if abs(x) >= 100 else 3
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof = 1); NaN for the std of fewer than 2 values."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else math.nan)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided `confidence` quantile of Student's t with `df` degrees of freedom."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))


def paired_interval(arm: Sequence[float], reference: Sequence[float]) -> Interval:
    """t-interval of the mean of arm[i] - reference[i] (the same seed at index i in both)."""
    if len(arm) != len(reference):
        raise ValueError(f"paired values need equal lengths, got {len(arm)} and {len(reference)}")
    d = np.asarray(arm, np.float64) - np.asarray(reference, np.float64)
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan, "n/a")
    half = t_quantile(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, float(n - 1), "paired")


def welch_interval(arm: Sequence[float], reference: Sequence[float]) -> Interval:
    """Welch's interval of mean(arm) - mean(reference) (unpaired, unequal variances)."""
    a, r = np.asarray(arm, np.float64), np.asarray(reference, np.float64)
    value = float(a.mean() - r.mean()) if a.size and r.size else math.nan
    n = int(a.size + r.size)
    if a.size < 2 or r.size < 2:
        return Interval(value, math.nan, math.nan, n, math.nan, "n/a")
    va, vr = float(a.var(ddof=1)) / a.size, float(r.var(ddof=1)) / r.size
    se = math.sqrt(va + vr)
    if se == 0.0:  # every seed scored the same in both arms: no spread to scale a t quantile by
        return Interval(value, value, value, n, float(n - 2), "welch")
    df = (va + vr) ** 2 / (va**2 / (a.size - 1) + vr**2 / (r.size - 1))
    half = t_quantile(df) * se
    return Interval(value, value - half, value + half, n, df, "welch")


def difference(arm: Mapping[int, float], reference: Mapping[int, float]) -> Interval:
    """arm - reference from {seed: value} of each: seed-paired when both hold the same seeds, else Welch."""
    if set(arm) == set(reference):
        seeds = sorted(arm)
        return paired_interval([arm[s] for s in seeds], [reference[s] for s in seeds])
    return welch_interval(list(arm.values()), list(reference.values()))


def higher_is_better(metric: str) -> bool:
    """False for times, losses and error rates (by the name's last part), True for scores."""
    return not metric.rsplit("/", 1)[-1].endswith(LOWER_IS_BETTER)


def expected_sign(expected: Mapping[str, Any], arm: str, metric: str) -> int | None:
    """What the claim expects of `arm` on `metric`: +1 better than the reference, -1 worse, 0 no
    difference, None no claim. `expected[arm]` is a sign, or {metric glob: sign} (first match)."""
    e = expected.get(arm)
    if e is None or isinstance(e, int):
        return e
    return next((int(v) for pattern, v in e.items() if fnmatch.fnmatchcase(metric, pattern)), None)


def verdict(d: Interval, expected: int | None, higher_better: bool = True) -> str:
    """One sentence: whether the interval contains 0, else the measured direction and whether it
    agrees with the claim's (`expected`: +1 better, -1 worse, 0 none, None no claim)."""
    claim = {None: "the claim gives no direction here", 0: "the claim expects no difference",
             1: "the claim expects better", -1: "the claim expects worse"}[expected]
    if not d.defined:
        return f"no interval (fewer than 2 seeds on a side), so no verdict; {claim}."
    if d.contains_zero():
        if expected == 0:
            return "the 95% interval contains 0: no difference resolved, consistent with the claim of none."
        return f"the 95% interval contains 0: no difference resolved with these seeds; {claim}."
    better = (d.value > 0) == higher_better
    measured = f"{'better' if better else 'worse'} than the reference (the 95% interval excludes 0)"
    if expected is None:
        return f"{measured}; {claim}."
    if expected == 0:
        return f"{measured}, where the claim expects no difference: disagrees with the claim."
    agrees = better == (expected > 0)
    return f"{measured}: {'agrees with' if agrees else 'contradicts'} the claim."


# ----------------------------------------------------------------------------- summary of a sweep


def arm_order(records: Sequence[Mapping[str, Any]], reference: str) -> list[str]:
    """The reference arm first, then the others in the order their first run appears."""
    arms = list(dict.fromkeys(str(r["arm"]) for r in records))
    return ([reference] if reference in arms else []) + [a for a in arms if a != reference]


def summarise(records: Sequence[Mapping[str, Any]], metrics: Sequence[str], reference: str,
              expected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per metric: each arm's values by seed, mean, std and n; each non-reference arm's difference to
    the reference (`difference`) with the claim's expected sign and the verdict sentence.

    records: finished runs, each {"arm": str, "seed": int, "scores": {metric: value or None}}."""
    expected = {str(k): v for k, v in (expected or {}).items()}
    arms = arm_order(records, reference)
    out: dict[str, Any] = {"reference": reference, "arms": arms, "metrics": {}}
    for metric in metrics:
        by_arm: dict[str, dict[int, float]] = {a: {} for a in arms}
        for r in records:
            v = r["scores"].get(metric)
            if v is not None and math.isfinite(float(v)):
                seed = int(r["seed"])
                if seed in by_arm[str(r["arm"])]:
                    raise ValueError(f"two runs of arm {r['arm']!r} with seed {seed}")
                by_arm[str(r["arm"])][seed] = float(v)
        hb = higher_is_better(metric)
        m: dict[str, Any] = {"higher_is_better": hb, "arms": {}, "differences": {}}
        for a in arms:
            mean, std = mean_std(list(by_arm[a].values()))
            m["arms"][a] = {"n": len(by_arm[a]), "mean": mean, "std": std, "seeds": dict(sorted(by_arm[a].items()))}
        if reference in by_arm:
            for a in arms:
                if a == reference:
                    continue
                d = difference(by_arm[a], by_arm[reference])
                e = expected_sign(expected, a, metric)
                m["differences"][a] = {**dataclasses.asdict(d), "expected": e, "verdict": verdict(d, e, hb)}
        out["metrics"][metric] = m
    return out


# ----------------------------------------------------------------------------- Markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(summary: Mapping[str, Any], *, title: str, claim: str, arm_key: str,
                    records: Sequence[Mapping[str, Any]], total_runs: int, notes: Sequence[str] = ()) -> str:
    """The report: the claim, scores per arm (mean +- std over seeds), differences to the reference with
    95% intervals, one verdict sentence per arm and metric, and every run's scores."""
    ref, arms, metrics = summary["reference"], summary["arms"], list(summary["metrics"])
    lines = [f"# {title}", "", f"**Claim.** {claim}", "",
             f"Compared: `{arm_key}`, reference `{arm_key}={ref}`; {len(records)} of {total_runs} runs finished. "
             "Scores are means +- sample std over seeds (n = seeds). Differences are arm - reference with a "
             "95% t-interval over seed-paired differences when both arms ran the same seeds, Welch's otherwise. "
             "Times, losses and error rates are better when lower.", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])

    lines += ["## Scores", ""]
    rows = []
    for a in arms:
        cells = [f"{a} (reference)" if a == ref else a]
        ns = {summary["metrics"][m]["arms"][a]["n"] for m in metrics}
        cells.append(str(max(ns)) if ns else "0")
        for m in metrics:
            s = summary["metrics"][m]["arms"][a]
            cell = f"{fmt(s['mean'])} +- {fmt(s['std'])}"
            cells.append(cell if s["n"] == max(ns) else f"{cell} (n={s['n']})")
        rows.append(cells)
    lines += _table([arm_key, "n", *metrics], rows) + [""]

    others = [a for a in arms if a != ref]
    if ref not in arms:
        lines += [f"No finished run of the reference arm `{arm_key}={ref}`: no differences.", ""]
    elif others:
        lines += [f"## Differences to `{arm_key}={ref}` (95% interval)", ""]
        rows = []
        for a in others:
            cells = [a]
            for m in metrics:
                d = summary["metrics"][m]["differences"][a]
                iv = Interval(**{k: d[k] for k in ("value", "low", "high", "n", "df", "method")})
                cells.append(f"{iv.format()} {d['method']}")
            rows.append(cells)
        lines += _table([arm_key, *metrics], rows) + ["", "## Verdicts", ""]
        for a in others:
            for m in metrics:
                d = summary["metrics"][m]["differences"][a]
                iv = Interval(**{k: d[k] for k in ("value", "low", "high", "n", "df", "method")})
                lines.append(f"- `{arm_key}={a}`, {m}: {iv.format()} ({d['method']}, n={d['n']}): {d['verdict']}")
        lines.append("")

    lines += ["## Runs", ""]
    rows = [[str(r["name"]), str(r["arm"]), str(r["seed"]), *(fmt(r["scores"].get(m)) for m in metrics)]
            for r in records]
    lines += _table(["run", arm_key, "seed", *metrics], rows)
    return "\n".join(lines) + "\n"
