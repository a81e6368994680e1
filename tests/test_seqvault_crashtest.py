"""The crash campaign: named kill points, random-time SIGKILLs and simulated power cuts, each trial
checked against the acknowledged operations; and proof that it notices a missing fsync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqvault.crashtest import run_campaign
from seqvault.killpoints import KILL_POINTS


def crashtest_cli(*args: str, timeout: int = 600) -> tuple[int, dict]:
    # A fresh process: the kill trials fork, and a process with no stray threads forks safely.
    proc = subprocess.run([sys.executable, "-m", "seqvault.cli", "crashtest", "--json", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_short_campaign_loses_and_duplicates_nothing() -> None:
    code, r = crashtest_cli("--trials", "60", "--seed", "11")
    assert code == 0 and r["ok"], r["failures"]
    assert r["kill_trials"] == 30 and r["powerloss_trials"] == 30
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["unrecoverable"] == 0
    assert sum(r["kills_at_points"].values()) >= 10 and r["power_cuts"] >= 10
    assert r["acked_events_checked"] > 10_000


@pytest.mark.parametrize("lying", ["wal-", "data-", "index-", "MANIFEST", "<dir>"])
def test_the_power_loss_check_notices_every_missing_fsync(tmp_path: Path, lying: str) -> None:
    """A disk that ignores one kind of fsync is what the engine would see with that fsync removed."""
    r = run_campaign(tmp_path, 30, seed=3, modes=("powerloss",), lying_fsync=(lying,))
    assert not r.ok, f"30 power cuts with {lying} fsyncs ignored went unnoticed"
    assert r.lost or r.unrecoverable or r.mismatched_trials


@pytest.mark.slow
def test_long_campaign_1000_kills_and_1000_power_cuts() -> None:
    code, r = crashtest_cli("--trials", "2000", "--seed", "2026", timeout=3000)
    assert code == 0 and r["ok"], r["failures"][:5]
    assert r["kill_trials"] >= 1000 and r["powerloss_trials"] >= 1000
    assert set(r["kills_at_points"]) == set(KILL_POINTS), set(KILL_POINTS) - set(r["kills_at_points"])
    assert r["lost"] == 0 and r["duplicated"] == 0
