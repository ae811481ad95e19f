"""The command-line plumbing every `python -m vlm_jax.<verb>` shares (`vlm_jax.cli`)."""

from __future__ import annotations

import pytest
from absl import flags

from vlm_jax import cli


def _toy():
    fv = flags.FlagValues()
    flags.DEFINE_string("name", None, "a name", flag_values=fv)
    flags.DEFINE_integer("n", 1, "a count", flag_values=fv)
    flags.DEFINE_multi_string("item", [], "repeatable", flag_values=fv)
    flags.mark_flag_as_required("name", flag_values=fv)
    return fv


def test_run_parses_flags_afresh_on_every_call(capsys):
    fv, seen = _toy(), []
    body = lambda: seen.append((fv.name, fv.n, fv.item))
    assert cli.run(fv, body, ["--name=a", "--n=3", "--item=x", "--item", "y"], doc="toy") == 0
    assert cli.run(fv, body, ["--name", "b"], doc="toy") == 0  # n and item back to their defaults
    assert seen == [("a", 3, ["x", "y"]), ("b", 1, [])]


def test_run_dispatches_one_command():
    fv, seen = _toy(), []
    assert cli.run(fv, seen.append, ["pull", "--name=a"], doc="toy", commands=("pull", "push")) == 0
    assert seen == ["pull"]


@pytest.mark.parametrize("argv, commands, message", [
    ([], (), "flag --name=None: Flag --name must have a value other than None."),
    (["--name=a", "--n=many"], (), "flag --n=many: invalid literal for int()"),
    (["--name=a", "--colour=red"], (), "Unknown command line flag 'colour'"),
    (["--name=a", "extra"], (), "unexpected arguments ['extra']"),
    (["--name=a"], ("pull", "push"), "give exactly one command, one of pull, push; got []"),
    (["--name=a", "fetch"], ("pull", "push"), "got ['fetch']"),
])
def test_run_reports_usage_errors_on_one_line_with_status_2(capsys, argv, commands, message):
    assert cli.run(_toy(), lambda *a: 0, argv, doc="toy", commands=commands) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_run_turns_input_errors_into_one_line_and_status_2(capsys):
    def body():
        raise FileNotFoundError("no such file: a.png\n(looked in the checkpoint too)")

    assert cli.run(_toy(), body, ["--name=a"], doc="toy") == 2
    assert capsys.readouterr().err == "error: no such file: a.png (looked in the checkpoint too)\n"
    with pytest.raises(KeyError):  # a bug is not a usage error: it keeps its traceback
        cli.run(_toy(), lambda: {}["x"], ["--name=a"], doc="toy")


def test_help_prints_the_doc_and_flags(capsys):
    assert cli.run(_toy(), lambda: 1 / 0, ["--help"], doc="python -m toy: does things.") == 0
    out = capsys.readouterr().out
    assert out.startswith("python -m toy: does things.") and "--name: a name" in out and "--n: a count" in out


def test_parse_json_object():
    assert cli.parse_json_object('{"a": [1, 2]}', "--world") == {"a": [1, 2]}
    with pytest.raises(ValueError, match="--world is not valid JSON"):
        cli.parse_json_object("{a: 1}", "--world")
    with pytest.raises(ValueError, match=r"--world must be a JSON object, got '\[1\]'"):
        cli.parse_json_object("[1]", "--world")
