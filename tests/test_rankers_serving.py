"""Serving helpers: the grid runs and reports sane figures; CUDA requests fall back to CPU with a note."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from rankers.registry import build_model
from rankers.serving import resolve_device, serving_grid, shared_vs_unshared
from storagebench.cli import main

TINY = {"d": 16, "heads": 2, "item_buckets": 97, "mlp_hidden": (16,), "dq": 4}


def test_cpu_fallback_when_no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, note = resolve_device("cuda")
    assert device.type == "cpu" and "ran on CPU" in note
    assert resolve_device("auto") == (torch.device("cpu"), None)
    assert resolve_device("cpu") == (torch.device("cpu"), None)


def test_grid_reports_every_cell(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results, notes = serving_grid("laser", (15, 40), (1, 7), device="cuda", paper_setting=False, budget_s=0.0,
                                  config_overrides=TINY)
    assert [(r.seq_len, r.candidates) for r in results] == [(15, 1), (15, 7), (40, 1), (40, 7)]
    assert notes and "CPU" in notes[0]
    for r in results:
        assert r.device == "cpu" and r.samples >= 3
        assert 0 < r.p50_ms <= r.p99_ms
        assert r.candidates_per_s == pytest.approx(r.requests_per_s * r.candidates)


def test_bf16_runs_on_cpu() -> None:
    results, _ = serving_grid("din", (20,), (3,), dtype="bf16", paper_setting=False, budget_s=0.0,
                              config_overrides={k: v for k, v in TINY.items() if k != "dq"})
    assert results[0].dtype == "bf16"


def test_shared_vs_unshared_reports_three_ways() -> None:
    model = build_model("laser", **TINY, max_len=30)
    out = shared_vs_unshared(model, 30, 8, budget_s=0.0)
    assert set(out) == {"shared_ms", "unshared_batched_ms", "looped_ms", "speedup_vs_unshared_batched",
                        "speedup_vs_looped"}
    assert all(v > 0 for v in out.values())


def test_serve_bench_cli_writes_json(tmp_path) -> None:
    result = CliRunner().invoke(main, ["serve-bench", "--small", "--seq-len", "30", "--candidates", "1",
                                       "--candidates", "4", "--budget-s", "0", "--no-compare", "--device", "cpu",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "serve_bench.json").read_text())
    assert doc["kind"] == "serve_bench" and doc["model"] == "laser"
    assert [(c["seq_len"], c["candidates"]) for c in doc["cells"]] == [(30, 1), (30, 4)]
