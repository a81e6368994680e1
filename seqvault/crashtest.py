"""Crash campaign: kill the engine at named points or random times, cut the power, check every ack.

Modelled on RocksDB's ``db_crashtest.py``. A trial replays a seeded workload (synced appends,
deletes, merges, reclamations, bulk loads, maintenance) on a small store whose files are tiny, so
WAL rotations, new data files and reclamations happen every few operations. Operation ``i`` is a
pure function of ``(seed, i)``, so the checker knows what every acknowledged operation did.

* ``kill`` (white-box and black-box): a forked child runs the workload with one named kill point
  armed (:mod:`seqvault.killpoints`, it SIGKILLs itself the ``nth`` time it gets there), or is
  SIGKILLed by the parent after a random delay. The child records each acknowledged operation
  in an ack file after the call returns (page-cache writes survive a killed process).
* ``powerloss``: the workload runs in-process on a :class:`~seqvault.simdisk.SimulatedDisk` that
  cuts the power at a random mutating I/O call; the directory is then rewritten to what a strict
  POSIX disk would hold (unsynced writes and directory changes lost, unsynced appends possibly
  torn).

After each trial the store is reopened normally and must equal the state after the last
acknowledged operation, or after the one in flight (which may have completed): an acknowledged
event missing is *lost*, an event stored twice is *duplicated*, anything else is a *mismatch*.
Every record must also pass ``seqvault verify``. Trials chain on one store, and a fresh store
starts every ``CHAIN`` trials. Each trial's seed is printed on failure so it can be replayed.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqvault.engine import SeqVault
from seqvault.errors import SeqVaultError
from seqvault.killpoints import KILL_POINTS, arm
from seqvault.policy import MergePolicy
from seqvault.schema import Field, Schema
from seqvault.simdisk import PowerCut, SimulatedDisk

SCHEMA = Schema([Field("ts", "int64"), Field("item", "uint64")], time_field="ts")
USERS = 16
MAX_LEN = 1_000_000  # never truncates in a trial, so the check is exact
OPS_PER_TRIAL = 40
CHAIN = 10
POLICY = MergePolicy(max_buffer_events=120, max_age_s=3600, reclaim_live_fraction=0.6, data_file_bytes=4096,
                     max_wal_bytes=2048)
MODES = ("kill", "powerloss")
CHILD_TIMEOUT_S = 60.0


@dataclass
class Op:
    kind: str  # append, delete, merge, reclaim, bulk_load, maintain
    uids: np.ndarray | None = None
    items: np.ndarray | None = None
    ts: np.ndarray | None = None


def make_op(seed: int, i: int) -> Op:
    rng = np.random.default_rng([seed, i])
    r = rng.random()
    if r < 0.55 or r >= 0.98:
        kind = "append"
    elif r < 0.63:
        return Op("delete", rng.choice(USERS, size=int(rng.integers(1, 3)), replace=False).astype(np.uint64))
    elif r < 0.75:
        return Op("merge")
    elif r < 0.83:
        return Op("reclaim")
    elif r < 0.88:
        kind = "bulk_load"
    else:
        return Op("maintain")
    n = int(rng.integers(1, 40))
    # Item ids name each event uniquely across the whole campaign (op index * 1000 + row).
    return Op(kind, rng.integers(0, USERS, n).astype(np.uint64), np.arange(n, dtype=np.uint64) + np.uint64(i * 1000),
              rng.integers(0, 50, n).astype(np.int64))


def apply_op(sv: SeqVault, op: Op) -> None:
    if op.kind == "append":
        sv.append(op.uids, {"ts": op.ts, "item": op.items}, sync=True)
    elif op.kind == "bulk_load":
        sv.bulk_load(op.uids, {"ts": op.ts, "item": op.items})
    elif op.kind == "delete":
        sv.delete(op.uids, sync=True)
    elif op.kind == "merge":
        sv.merge()
    elif op.kind == "reclaim":
        sv.reclaim()
    else:
        sv.maintain()


def expected(seed: int, start: int, upto: int) -> dict[int, list[int]]:
    """Each user's sorted item ids after ops ``start..upto`` (inclusive) on an empty store."""
    events: dict[int, list[int]] = {}
    for i in range(start, upto + 1):
        op = make_op(seed, i)
        if op.kind == "delete":
            for u in op.uids.tolist():
                events.pop(u, None)
        elif op.kind in ("append", "bulk_load"):
            for u, item in zip(op.uids.tolist(), op.items.tolist(), strict=True):
                events.setdefault(u, []).append(item)
    return {u: sorted(v) for u, v in events.items() if v}


def stored(sv: SeqVault) -> dict[int, list[int]]:
    offsets, cols = sv.get_many(np.arange(USERS, dtype=np.uint64))
    items = cols["item"]
    return {u: sorted(items[offsets[u]:offsets[u + 1]].tolist()) for u in range(USERS) if offsets[u + 1] > offsets[u]}


@dataclass
class CampaignResult:
    trials: int = 0
    kill_trials: int = 0
    powerloss_trials: int = 0
    kills_at_points: Counter = field(default_factory=Counter)  # named point -> trials killed there
    random_kills: int = 0
    power_cuts: int = 0
    acked_ops: int = 0
    acked_events_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatched_trials: int = 0
    verify_failures: int = 0
    unrecoverable: int = 0  # trials after which the store would not open
    failures: list[str] = field(default_factory=list)  # one line per bad trial, with its replay seed

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.mismatched_trials or self.verify_failures or self.unrecoverable)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kills_at_points"] = dict(self.kills_at_points)
        d["ok"] = self.ok
        return d


class _Chain:
    """One store that successive trials continue: which ops it holds, and from where."""

    def __init__(self, root: Path, seed: int, number: int) -> None:
        self.path = root / f"store-{number}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.seed = seed
        self.start = 0  # first op of this store
        self.next_op = 0
        self.durable_upto = -1
        self.broken = False  # a failed trial: the next one starts a fresh store


def _check(result: CampaignResult, chain: _Chain, last_acked: int, label: str) -> None:
    """Reopen; the store must equal the state after ``last_acked`` or after the op in flight."""
    from seqvault.verify import verify_store
    try:  # the schema too: a cut during creation may leave no MANIFEST, i.e. no store yet
        with SeqVault.open(chain.path, schema=SCHEMA, max_len=MAX_LEN, merge_policy=POLICY) as sv:
            got = stored(sv)
    except SeqVaultError as e:
        result.unrecoverable += 1
        result.failures.append(f"{label}: the store does not reopen: {e}")
        chain.broken = True
        return
    want = expected(chain.seed, chain.start, last_acked)
    acked_events = sum(len(v) for v in want.values())
    result.acked_events_checked += acked_events
    matched = None
    for candidate in (last_acked, last_acked + 1):
        if got == expected(chain.seed, chain.start, candidate):
            matched = candidate
            break
    if matched is None:
        counts = {u: Counter(v) for u, v in got.items()}
        lost = sum(max(0, n - counts.get(u, Counter())[x]) for u, v in want.items() for x, n in Counter(v).items())
        dup = sum(n - 1 for c in counts.values() for n in c.values() if n > 1)
        result.lost += lost
        result.duplicated += dup
        result.mismatched_trials += 1
        bad = sorted(u for u in set(got) | set(want) if got.get(u) != want.get(u))
        diff = "; ".join(f"user {u}: stored {got.get(u, [])}, acknowledged {want.get(u, [])}" for u in bad[:2])
        result.failures.append(f"{label}: store matches neither op {last_acked} nor {last_acked + 1} "
                               f"({lost} acknowledged events lost, {dup} duplicated; {diff})")
        matched = last_acked
    report = verify_store(chain.path)
    if not report.ok:
        result.verify_failures += 1
        result.failures.append(f"{label}: verify found {report.problems[0]}")
    chain.durable_upto = matched
    chain.next_op = matched + 1


def _child(chain: _Chain, first: int, ops: int, ack_path: Path, point: str | None, nth: int) -> None:
    """In the forked child: run ops, note each acknowledgement, die at the armed point if reached."""
    code = 0
    try:
        ack = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sv = SeqVault.open(chain.path, schema=SCHEMA, max_len=MAX_LEN, merge_policy=POLICY)
        if point is not None:
            arm(point, nth)
        for i in range(first, first + ops):
            apply_op(sv, make_op(chain.seed, i))
            os.write(ack, f"{i}\n".encode())
        sv.close()
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


def kill_trial(result: CampaignResult, chain: _Chain, rng: random.Random, label: str) -> None:
    first = chain.next_op
    ack_path = chain.path.with_name(chain.path.name + ".acks")
    ack_path.unlink(missing_ok=True)
    random_time = rng.random() < 0.25
    point, nth = (None, 0) if random_time else (rng.choice(KILL_POINTS), rng.randint(1, 6))
    pid = os.fork()
    if pid == 0:
        _child(chain, first, OPS_PER_TRIAL, ack_path, point, nth)
    if random_time:
        time.sleep(rng.uniform(0.0, 0.25))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    status = _wait(pid, CHILD_TIMEOUT_S)
    if status is None:
        result.failures.append(f"{label}: the child hung for {CHILD_TIMEOUT_S:g} s (killed)")
        result.mismatched_trials += 1
        status = _wait(pid, None)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        result.failures.append(f"{label}: the child failed (exit {os.WEXITSTATUS(status)}) before any kill")
        result.mismatched_trials += 1
    if killed:
        if random_time:
            result.random_kills += 1
        else:
            result.kills_at_points[point] += 1
    acks = [int(x) for x in ack_path.read_text().split()] if ack_path.exists() else []
    last_acked = acks[-1] if acks else first - 1
    result.acked_ops += len(acks)
    result.kill_trials += 1
    _check(result, chain, last_acked, f"{label} (kill {point or 'random time'} #{nth})")


def _wait(pid: int, timeout_s: float | None) -> int | None:
    """waitpid with a deadline (a hung child fails its trial instead of hanging the campaign)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return None
        time.sleep(0.002)


def powerloss_trial(result: CampaignResult, chain: _Chain, rng: random.Random, label: str,
                    lying_fsync: tuple[str, ...] = ()) -> None:
    first = chain.next_op
    disk = SimulatedDisk(chain.path, lying_fsync=lying_fsync)
    last_acked = first - 1
    disk.cut_power_after(rng.randint(1, 400))
    try:
        sv = SeqVault.open(chain.path, schema=SCHEMA, max_len=MAX_LEN, merge_policy=POLICY, fs=disk)
        for i in range(first, first + OPS_PER_TRIAL):
            apply_op(sv, make_op(chain.seed, i))
            last_acked = i
            result.acked_ops += 1
        sv._abandon()  # the power never went out: stop as a crash would, then cut it anyway
        disk.cut = True
    except PowerCut:
        result.power_cuts += 1
    disk.power_loss(rng)
    result.powerloss_trials += 1
    _check(result, chain, last_acked, label)


def run_campaign(root: str | os.PathLike, trials: int, seed: int, modes: tuple[str, ...] = MODES,
                 progress: Callable[[CampaignResult], None] | None = None,
                 lying_fsync: tuple[str, ...] = ()) -> CampaignResult:
    """Run ``trials`` trials (alternating over ``modes``) under ``root``; see the module docstring.

    ``lying_fsync`` makes the simulated disk ignore fsyncs of those files (power-loss trials):
    the campaign's own check that it would notice a missing fsync.
    """
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown crash-test mode {m!r}; choose from {', '.join(MODES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("seqvault")
    level = logger.level
    logger.setLevel(logging.ERROR)  # every torn tail cut is logged: expected here
    try:
        return _campaign(root, trials, seed, modes, progress, lying_fsync)
    finally:
        logger.setLevel(level)


def _campaign(root: Path, trials: int, seed: int, modes: tuple[str, ...],
              progress: Callable[[CampaignResult], None] | None, lying_fsync: tuple[str, ...]) -> CampaignResult:
    _warm_up(root / "warm")
    result = CampaignResult()
    chain = None
    for t in range(trials):
        trial_seed = seed * 1_000_003 + t
        if t % CHAIN == 0 or chain.broken:
            if chain is not None:
                shutil.rmtree(chain.path, ignore_errors=True)
            chain = _Chain(root, trial_seed, t)
        rng = random.Random(trial_seed)
        mode = modes[t % len(modes)]
        label = f"trial {t} ({mode}, replay: --seed {seed} --trials {t + 1})"
        if mode == "kill":
            kill_trial(result, chain, rng, label)
        else:
            powerloss_trial(result, chain, rng, label, lying_fsync)
        result.trials += 1
        if progress is not None:
            progress(result)
    if chain is not None:
        shutil.rmtree(chain.path, ignore_errors=True)
    return result


def _warm_up(path: Path) -> None:
    """Compile every kernel in this process first, so forked children start at full speed."""
    shutil.rmtree(path, ignore_errors=True)
    with SeqVault.open(path, schema=SCHEMA, max_len=MAX_LEN, merge_policy=POLICY) as sv:
        for i in range(30):
            apply_op(sv, make_op(1, i))
        stored(sv)
        sv.get(1)
    shutil.rmtree(path)


__all__ = ["CampaignResult", "expected", "make_op", "run_campaign"]
