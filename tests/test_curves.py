"""curves.png from a workdir's metrics.jsonl and eval/results.json."""

import json

from PIL import Image

from vlm_jax.train import curves


def _write(workdir, rows, results=None):
    with open(workdir / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if results is not None:
        (workdir / "eval").mkdir()
        (workdir / "eval" / "results.json").write_text(json.dumps(results))


def test_no_metrics_no_figure(tmp_path):
    assert curves.write_curves(str(tmp_path)) is None


def test_panels_follow_what_the_run_logged(tmp_path):
    train = [{"step": s, "loss": 5.0 / s, "task_loss/count": 4.0 / s, "task_loss/ground_box": 6.0 / s}
             for s in (25, 50, 75)]
    probe = [{"step": s, "vision/logprob_drop_on_swap": 0.01 * s} for s in (50, 75)]
    results = {"tasks": {"counting": {"exact": 0.7, "n": 1000, "ci95": [0.67, 0.73], "baseline": 0.33,
                                      "vision_off": 0.34}}}
    one = tmp_path / "a"
    one.mkdir()
    _write(one, train)
    three = tmp_path / "b"
    three.mkdir()
    _write(three, train + probe, results)
    w1 = Image.open(curves.write_curves(str(one))).size[0]
    path = curves.write_curves(str(three))
    assert path == str(three / curves.CURVES_FILE)
    w3 = Image.open(path).size[0]
    assert 2.5 < w3 / w1 < 3.5, (w1, w3)  # loss, probe and scores panels vs the loss panel alone
