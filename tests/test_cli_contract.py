"""The CLI contract: every command of ``storagebench`` and ``seqvault`` meets bad input with one
clear line, a non-zero exit, no traceback and nothing written.

The commands come from click's own command tree, so a new command or option is covered without
editing this file. Every numeric option must declare its range (a plain ``int`` would let
``--users -5`` through to a traceback deep in a config), and each typed option is given a
wrong-type, an empty and an out-of-range value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from seqvault.cli import main as seqvault_cli
from storagebench.cli import main as storagebench_cli

# Numeric options that may take any value of their type.
UNBOUNDED = {"split_time"}
SKIP = {"help", "debug", "version"}


def walk(group: click.Group, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from walk(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


COMMANDS = [(storagebench_cli, path, cmd) for path, cmd in walk(storagebench_cli, ())] + \
           [(seqvault_cli, path, cmd) for path, cmd in walk(seqvault_cli, ())]


def bad_values(param: click.Parameter) -> list[str]:
    t = param.type
    if isinstance(t, click.Choice):
        return ["no-such-choice", ""]
    if isinstance(t, click.Path) and t.exists:
        return ["/no/such/path-for-the-cli-contract"]
    values = []
    if isinstance(t, click.types.IntParamType | click.types.FloatParamType):
        values += ["abc", ""]
    if isinstance(t, click.IntRange | click.FloatRange):
        step = 1 if isinstance(t, click.IntRange) else 0.5
        if t.min is not None:
            values.append(str(t.min if t.min_open else t.min - step))
        if t.max is not None and not (isinstance(t, click.IntRange) and t.max >= 2**63):
            values.append(str(t.max if t.max_open else t.max + step))
        elif t.max is not None:
            values.append(str(t.max + 1))
    return values


def typed_params(cmd: click.Command) -> list[click.Parameter]:
    return [p for p in cmd.params if p.name not in SKIP and not getattr(p, "is_flag", False)
            and not getattr(p, "count", False)]


def out_option(cmd: click.Command) -> str | None:
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name in ("out", "out_dir", "output"):
            return p.opts[-1]
    return None


def cases() -> Iterator[object]:
    for root, path, cmd in COMMANDS:
        for p in typed_params(cmd):
            for value in bad_values(p):
                yield pytest.param(root, path, cmd, p, value, id=f"{root.name}-{'-'.join(path)}-{p.name}={value!r}")


def test_the_tree_is_walked() -> None:
    names = {" ".join(path) for _, path, _ in COMMANDS}
    assert {"table1", "run", "report", "workload generate", "verify", "crashtest", "recover"} <= names


@pytest.mark.parametrize(("root", "path", "cmd"), [pytest.param(r, p, c, id=f"{r.name}-{'-'.join(p)}")
                                                   for r, p, c in COMMANDS])
def test_every_numeric_option_declares_its_range(root: click.Group, path: tuple[str, ...],
                                                 cmd: click.Command) -> None:
    for p in typed_params(cmd):
        plain = type(p.type) in (click.types.IntParamType, click.types.FloatParamType)
        assert not plain or p.name in UNBOUNDED, (
            f"{root.name} {' '.join(path)} {p.opts if isinstance(p, click.Option) else p.name}: a plain "
            f"{p.type.name} takes any value; give it a click.IntRange/FloatRange")


@pytest.mark.parametrize(("root", "path", "cmd", "param", "value"), list(cases()))
def test_a_bad_value_gives_one_clear_line(tmp_path: Path, root: click.Group, path: tuple[str, ...],
                                         cmd: click.Command, param: click.Parameter, value: str) -> None:
    out = tmp_path / "out"
    args = [*path]
    flag = out_option(cmd)
    if flag is not None and param.name not in ("out", "out_dir", "output"):
        args += [flag, str(out / "report.html") if flag in ("-o", "--output") else str(out)]
    if isinstance(param, click.Option):
        args += [param.opts[0], value]
    else:  # a positional: the ones before it get usable values ("--" lets "-1" be a value)
        args.append("--")
        for p in cmd.params:
            if p is param:
                break
            if isinstance(p, click.Argument):
                args.append(str(tmp_path) if isinstance(p.type, click.Path) else "1")
        args.append(value)
    result = CliRunner().invoke(root, args)
    where = f"{root.name} {' '.join(args)}"
    assert result.exit_code != 0, f"{where} exited 0"
    assert isinstance(result.exception, SystemExit), f"{where} raised {result.exception!r}"
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, f"{where}: {result.output!r}"
    names = [*param.opts, param.human_readable_name] if isinstance(param, click.Option) else \
        [param.human_readable_name]
    assert any(n in errors[0] for n in names), f"{where}: the error does not name the option: {errors[0]}"
    assert not out.exists() or not any(out.rglob("*")), f"{where} wrote to {out}"


# -- domain errors: one line, exit 2 or 1, a traceback only with --debug ----------------------------
def test_issue_cases(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(storagebench_cli, ["table1", "--users", "-5", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "'--users'" in r.output and "Traceback" not in r.output
    r = runner.invoke(storagebench_cli, ["report", "/no/such/dir", "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "/no/such/dir" in r.output and not (tmp_path / "r.html").exists()
    broken = Path(__file__).parent / "fixtures" / "results" / "broken"
    r = runner.invoke(storagebench_cli, ["report", str(broken), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 1 and not (tmp_path / "r.html").exists()
    assert "skipped:" in r.output and "table1.json is not valid JSON" in r.output
    assert r.output.count("Error:") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(storagebench_cli, ["report", str(empty), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 1 and "holds no result file" in r.output


def test_report_renders_the_good_files_and_names_the_skipped(tmp_path: Path) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "results"
    good = next(p.parent for p in sorted(fixtures.glob("*/*.json")) if p.parent.name != "broken")
    r = CliRunner().invoke(storagebench_cli, ["report", str(good), str(fixtures / "broken"),
                                              "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.html").exists() and "skipped:" in r.output and "broken" in r.output


def test_a_domain_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["workload", "generate", "--out", str(tmp_path / "w"), "--set", "episode_prob=7"]
    r = CliRunner().invoke(storagebench_cli, args)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip().startswith("Error:") and "episode_prob" in r.output and len(r.output.splitlines()) == 1
    r = CliRunner().invoke(storagebench_cli, [*args, "--debug"])
    assert r.exit_code != 0 and isinstance(r.exception, ValueError)
    monkeypatch.setenv("STORAGEBENCH_DEBUG", "1")
    r = CliRunner().invoke(storagebench_cli, args)
    assert isinstance(r.exception, ValueError)


def test_seqvault_commands_take_debug_too(tmp_path: Path) -> None:
    r = CliRunner().invoke(seqvault_cli, ["stats", str(tmp_path)])
    assert r.exit_code == 2 and "no SeqVault store" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(seqvault_cli, ["stats", str(tmp_path), "--debug"])
    assert r.exit_code != 0


# -- the stores' and the engine's entry points ----------------------------------------------
STORES = ["memory", "rocksdb_lastn", "rocksdb_packed", "seqvault", "null"]


def _store(name: str, path: Path):
    from seqvault.schema import Field, Schema
    from storagebench.stores import open_store
    schema = Schema([Field("item", "uint32"), Field("ts", "int64")], time_field="ts")
    return open_store(name, str(path), schema, max_len=10)


def _engine(path: Path):
    from seqvault import Field, Schema, SeqVault
    return SeqVault.open(path, schema=Schema([Field("item", "uint32"), Field("ts", "int64")], time_field="ts"),
                         max_len=10)


BAD_BATCHES = {
    "wrong dtype": ([1, 2], {"item": np.array([1.5, 2.0]), "ts": [1, 2]}, "item"),
    "unknown field": ([1], {"item": [1], "ts": [1], "colour": [3]}, "colour"),
    "missing field": ([1], {"ts": [1]}, "item"),
    "negative id": ([-1], {"item": [1], "ts": [1]}, "user"),
    "huge id": ([2**64], {"item": [1], "ts": [1]}, "user"),
    "value out of range": ([1], {"item": [2**32], "ts": [1]}, "item"),
    "lengths differ": ([1, 2], {"item": [1], "ts": [1, 2]}, "item"),
}


@pytest.mark.parametrize("target", [*STORES, "engine"])
@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_entry_points_refuse_bad_batches_naming_the_field(tmp_path: Path, target: str, case: str) -> None:
    from seqvault.schema import SchemaError
    uids, cols, field = BAD_BATCHES[case]
    with (_engine(tmp_path / "s") if target == "engine" else _store(target, tmp_path / "s")) as s:
        for method in ("append", "bulk_load"):
            with pytest.raises(SchemaError, match=field):
                getattr(s, method)(uids if target == "engine" else _ids(uids), cols)


def _ids(uids: list[int]) -> object:
    try:
        return np.array(uids, dtype=np.uint64)
    except OverflowError:
        return uids  # the binding must refuse it, not numpy


@pytest.mark.parametrize("target", [*STORES, "engine"])
def test_entry_points_take_empty_batches_and_refuse_bad_last_n(tmp_path: Path, target: str) -> None:
    from seqvault import SeqVaultError
    from seqvault.schema import SchemaError
    with (_engine(tmp_path / "s") if target == "engine" else _store(target, tmp_path / "s")) as s:
        s.append(np.array([], np.uint64), {"item": np.array([], np.uint32), "ts": np.array([], np.int64)})
        offsets, _ = s.get_many(np.array([1, 2], np.uint64))
        if getattr(s, "returns_stored_data", True):  # the null store answers every read with N events
            assert list(offsets) == [0, 0, 0]
        for bad in (-1, math.inf):
            with pytest.raises((SchemaError, SeqVaultError), match="last_n"):
                s.get_many(np.array([1], np.uint64), last_n=bad)
