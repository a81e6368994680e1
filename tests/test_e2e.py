"""`storagebench e2e`: a tiny workload through real storage nodes and real (untrained) models.

No timed assertions: the checks are on structure (stages add up to the total, nothing negative),
on correctness (the top k served equals scoring the same history directly), on the wire
(dictionary zstd <= zstd <= raw on repetitive data) and on the result file (the report reads it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from rankers.inputs import candidates_from_numpy, history_from_csr
from reports import PlanInputs, load_results, render_html
from storagebench import wire
from storagebench.cli import main
from storagebench.e2e_driver import STAGES, DriveResult, search_max_rate
from storagebench.experiments.e2e import (
    E2EConfig,
    candidate_bank,
    collect_reads,
    run_arm,
    run_e2e,
)
from storagebench.ranker_stage import RankerStage
from storagebench.stores.memory import MemoryStore
from workloads import GeneratorConfig, generate

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "e2e" / "e2e.json"


def tiny_config(**kw: object) -> E2EConfig:
    base = {"seq_len": 64, "candidates": 16, "top_k": 4, "rate": 25.0, "warmup_s": 0.2, "window_s": 1.0,
            "budget_ms": 1000.0, "search_s": 0.0, "io": "buffered", "wire_sample_users": 12,
            "dict_train_users": 24, "dict_bytes": 2048, "device": "auto"}
    return E2EConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def workload():
    return generate(GeneratorConfig.preset("small", users=60, live_seconds=5.0, seed=3))


@pytest.fixture(scope="module")
def e2e_dir(workload, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e")
    cfg = tiny_config(search_s=2.0, search_step_s=0.5, search_start_rate=30.0, max_batch=4, max_wait_ms=2.0)
    run_e2e(workload, cfg, str(out),
            arms=[("memory", "din"), ("seqvault", "laser")])
    return out


def check_stages(stages: dict[str, np.ndarray]) -> None:
    parts = sum(stages[s] for s in STAGES if s != "total")
    assert all((stages[s] >= 0).all() for s in STAGES)
    assert (parts == stages["total"]).all()  # the stages partition each request's latency
    for s in STAGES:
        assert (stages["total"] >= stages[s]).all()


def test_served_top_k_equals_scoring_the_history_directly(workload, tmp_path: Path) -> None:
    cfg = tiny_config()
    reads, bank = collect_reads(workload), candidate_bank(workload, cfg.candidates, seed=cfg.seed)
    run, result, reqs = run_arm(workload, "memory", "din", cfg, reads, bank, str(tmp_path / "store"))
    check_stages(result.stages_ns)
    # every request answered (whether the latency grew depends on the machine's load: not asserted)
    assert result.completed and run["measured_requests"] == len(reqs) - reqs.measured_from > 0

    # The same history straight from a reference store, the same candidates, the same weights.
    ref = MemoryStore(str(tmp_path / "ref"), workload.schema, max_len=cfg.seq_len)
    for uids, cols in workload.iter_backfill():
        ref.bulk_load(uids, cols)
    ops = 0   # the arm replays the first refresh_ops live operations' appends before the run
    for chunk in workload.iter_live(chunk_ops=1000):
        take = min(len(chunk), cfg.refresh_ops - ops)
        if take <= 0:
            break
        ref.append(*chunk.slice_ops(0, take).events)
        ops += take
    assert ops > 0
    ranker = RankerStage("din", cfg.seq_len, workload.schema, "columns", "raw", device=cfg.device, seed=cfg.seed)
    sets = len(reqs.cand_items)
    for row, i in enumerate(range(reqs.measured_from, min(len(reqs), reqs.measured_from + 8))):
        offsets, cols = ref.get_many(reqs.users[i : i + 1], cfg.seq_len)
        hist = history_from_csr(offsets, cols, max_len=cfg.seq_len, request_time_ms=reqs.request_time_ms[i : i + 1])
        cands = candidates_from_numpy(reqs.cand_items[i % sets][None], {"category": reqs.cand_side["category"][i % sets][None]})
        with ranker.torch.inference_mode():
            scores = ranker.model(hist.to(ranker.device), cands.to(ranker.device))[0].cpu().numpy()
        expected = np.argsort(-scores, kind="stable")[: cfg.top_k]
        assert result.topk[row].tolist() == expected.tolist()


def test_result_file_conforms_and_renders(e2e_dir: Path) -> None:
    doc = json.loads((e2e_dir / "e2e.json").read_text())
    assert doc["kind"] == "e2e" and doc["budget_ms"] == 1000.0 and doc["machine"] and doc["workload"]
    assert [(r["store"], r["model"]) for r in doc["runs"]] == [("memory", "din"), ("seqvault", "laser")]
    for run in doc["runs"]:
        for key in ("device", "seq_len", "candidates", "top_k", "rate_per_s", "batching", "stages",
                    "max_rate_within_budget_per_s", "wire_bytes", "budget_ms"):
            assert key in run
        assert run["batching"] == {"max_batch": 4, "max_wait_ms": 2.0}
        assert set(run["stages"]) == set(STAGES)
        for s in STAGES:
            st = run["stages"][s]
            assert 0 <= st["p50_ms"] <= st["p99_ms"] <= st["p999_ms"]
            assert st["p99_ms"] <= run["stages"]["total"]["p999_ms"] * 1.01 + 0.01
        assert run["max_rate_within_budget_per_s"] is None or run["max_rate_within_budget_per_s"] > 0
        steps = run["rate_search"]["steps"]
        assert steps and all(st["rate_per_s"] > 0 and isinstance(st["within_budget"], bool) for st in steps)
        assert set(run["wire_bytes"]) == {"raw", "zstd", "zstd_dict"}
        assert run["wire_bytes"]["zstd"] < run["wire_bytes"]["raw"]
        assert run["wire"]["format"] == "columns"
    assert sorted(p.name for p in (e2e_dir / "hdr").iterdir()) == sorted(
        f"{arm}.{s}.hlog" for arm in ("memory+din", "seqvault+laser") for s in STAGES)

    results = load_results([str(e2e_dir)])
    assert not results.problems and results.kinds == {"e2e"}
    html = render_html(results, PlanInputs(), [str(e2e_dir)])
    assert 'id="chart-e2e"' in html and "seqvault + laser on" in html and "zstd_dict" in html


def test_the_fixture_keeps_the_written_format(e2e_dir: Path) -> None:
    written = json.loads((e2e_dir / "e2e.json").read_text())["runs"][0]
    fixture = json.loads(FIXTURE.read_text())["runs"][0]
    assert set(fixture) <= set(written)  # every key the fixture (and so the report tests) uses is written


def test_wire_round_trip_and_dictionary_helps_on_repetitive_sequences(workload) -> None:
    schema = workload.schema
    rng = np.random.default_rng(0)

    def user(n: int) -> dict[str, np.ndarray]:  # a narrow vocabulary: much shared across users
        return {f.name: rng.integers(0, 50, n).astype(f.np_dtype) for f in schema.fields}

    users = [user(int(rng.integers(20, 200))) for _ in range(120)]
    for fmt in wire.FORMATS:
        payloads = [wire.encode(c, schema, fmt) for c in users]
        back = wire.decode(payloads[0], schema, fmt)
        assert all(np.array_equal(back[k], users[0][k]) for k in schema.names)
        d = wire.train_dictionary(payloads[:80], 4096)
        sizes = wire.measure_sizes(payloads[80:], d)
        assert sizes["zstd_dict"] <= sizes["zstd"] <= sizes["raw"]
    assert len(wire.encode(users[0], schema, "columns")) == len(users[0]["ts"]) * schema.row_bytes
    assert wire.wire_format("rocksdb_lastn") == "text" and wire.wire_format("seqvault") == "columns"


def test_cli_help_and_clear_errors() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["e2e", "--help"])
    assert res.exit_code == 0
    assert "--budget-ms" in res.output and "default: 100" in res.output and "--max-batch" in res.output
    res = runner.invoke(main, ["e2e", "--arm", "nosuchstore:laser"])
    assert res.exit_code == 2 and "unknown store 'nosuchstore'" in res.output
    res = runner.invoke(main, ["e2e", "--arm", "seqvault:nosuchmodel"])
    assert res.exit_code == 2 and "unknown model 'nosuchmodel'" in res.output
    res = runner.invoke(main, ["e2e", "--top-k", "50", "--candidates", "10"])
    assert res.exit_code == 2 and "top_k (50) cannot exceed candidates (10)" in res.output
    with pytest.raises(ValueError, match="wire_codec must be one of"):
        E2EConfig(wire_codec="gzip")


def test_rate_search_doubles_then_bisects_to_the_capacity() -> None:
    def fake_run(rate: float) -> DriveResult:  # a pipeline that fits the budget up to 10 requests/s
        total = np.full(50, (50 if rate <= 10 else 200) * 10**6, dtype=np.int64)
        zeros = np.zeros(50, dtype=np.int64)
        stages = {s: (total if s in ("forward", "total") else zeros) for s in STAGES}
        return DriveResult(stages, zeros, 0, np.zeros((50, 1), np.int64), zeros, zeros, zeros, zeros, True, False)

    best, steps = search_max_rate(fake_run, 100.0, start_rate=2.0, time_budget_s=60.0)
    assert [s["rate_per_s"] for s in steps][:5] == [2.0, 4.0, 8.0, 16.0, 12.0]
    assert best is not None and 9.0 <= best <= 10.0
    assert all(s["within_budget"] == (s["rate_per_s"] <= 10) for s in steps)
