"""Read-your-writes inside the measured window.

A sampled share of in-window reads asks for its data. Appends are applied in arrival order by the
node's one writer, so when a read was sent the store held the backfill plus a prefix of the sent
appends: at least every append acknowledged by then (read-your-writes), at most every append sent
by then. The read must equal the newest ``last_n`` events of one of those states, built here with
the same merge rule the reference store uses. Anything else is a lost, stale or invented event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from seqvault.schema import Schema
from storagebench.stores.sequences import merge_newest


class CorrectnessError(AssertionError):
    """A read inside the window returned something no acknowledged state of the store holds."""


def backfill_of(users: Iterable[int], backfill: Iterable[tuple[np.ndarray, Mapping[str, np.ndarray]]],
                schema: Schema, max_len: int) -> dict[int, dict[str, np.ndarray] | None]:
    """Each user's stored backfill (newest ``max_len``), from the workload's backfill chunks."""
    wanted = np.array(sorted(set(int(u) for u in users)), dtype=np.uint64)
    out: dict[int, dict[str, np.ndarray] | None] = {int(u): None for u in wanted}
    if not len(wanted):
        return out
    for uids, cols in backfill:
        hit = np.isin(uids, wanted)
        if not hit.any():
            continue
        for u in np.unique(uids[hit]).tolist():
            sel = uids == u
            out[u] = merge_newest(out[u], {k: np.asarray(v)[sel] for k, v in cols.items()}, schema, max_len)
    return out


def check_reads(checked: Sequence[dict[str, Any]], append_args: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]],
                backfill: Mapping[int, dict[str, np.ndarray] | None], schema: Schema, max_len: int) -> dict[str, Any]:
    """Verify every checked read; returns a summary, raises :class:`CorrectnessError` on the first bad one.

    ``append_args`` are the schedule's append batches in send order (``appends_acked`` and
    ``appends_sent`` of each checked read index into it).
    """
    unanswered = 0
    for c in checked:
        if c["result"] is None:
            unanswered += 1
            continue
        user, last_n = c["user"], (max_len if c["last_n"] is None else int(c["last_n"]))
        offsets, cols = c["result"]
        got = {k: v[offsets[0]:offsets[1]] for k, v in cols.items()}
        state = backfill.get(user)
        states = []
        for k in range(c["appends_sent"] + 1):
            if k > 0:
                uids, batch = append_args[k - 1]
                sel = np.asarray(uids) == user
                if sel.any():
                    state = merge_newest(state, {f: np.asarray(v)[sel] for f, v in batch.items()}, schema, max_len)
            if k >= c["appends_acked"]:
                states.append(state)
        if not any(_equal(got, s, schema, last_n) for s in states):
            held = len(got[schema.time_field])
            want = [0 if s is None else min(len(s[schema.time_field]), last_n) for s in states]
            raise CorrectnessError(
                f"read-your-writes failed: in-window read #{c['op']} of user {user} returned {held} events that "
                f"match no state the store could hold (backfill plus appends 1..k, k from {c['appends_acked']} "
                f"acknowledged to {c['appends_sent']} sent; those states hold {sorted(set(want))} events). "
                f"The store lost, reordered or invented data.")
    return {"checked_reads": len(checked) - unanswered, "unanswered": unanswered, "ok": True}


def _equal(got: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray] | None, schema: Schema, last_n: int) -> bool:
    if state is None:
        return len(got[schema.time_field]) == 0
    n = min(len(state[schema.time_field]), last_n)
    return all(np.array_equal(got[f.name], np.asarray(state[f.name][len(state[f.name]) - n:], dtype=f.np_dtype))
               for f in schema.fields)
