"""The default event schema, modelled on the multi-scenario histories of the LASER paper (§4.1.1).

Every event is one thing a user did with one item in one scenario. The columns are integers so
that a schema-aware store can pack them (paper §3.3); each is as narrow as its values honestly
allow. Codes for ``action`` and ``scenario`` are listed in :data:`ACTIONS` and :data:`SCENARIOS`.

An event with ``action >= ACTIONS["click"]`` (anything but an impression) is a positive
engagement: CTR models use ``action != ACTIONS["impression"]`` as the click label.
"""

from __future__ import annotations

from seqvault.schema import Field, Schema

# name -> code. Codes are stable: saved workloads and trained models depend on them.
ACTIONS: dict[str, int] = {
    "impression": 0,  # the item was shown; no engagement
    "click": 1,       # opened the item (for imported logs: a page view of the item's detail page)
    "like": 2,
    "collect": 3,     # bookmarked / favourited
    "share": 4,
    "comment": 5,
    "follow": 6,      # followed the item's author
    "search": 7,      # a query that led to this item
    "cart": 8,        # put in a shopping cart (Taobao `cart`)
    "purchase": 9,    # bought (Taobao `buy`)
    "rate": 10,       # rated (MovieLens)
}

SCENARIOS: dict[str, int] = {
    "feed": 0,    # the dual-column feed stream
    "video": 1,   # the single-column video stream
    "search": 2,  # search results
}

DEFAULT_SCHEMA = Schema(
    [
        Field("item_id", "uint32", "dense item index (an embedding-table row), 0..n_items-1"),
        Field("ts", "int64", "event time, milliseconds since the Unix epoch (UTC)"),
        Field("action", "uint8", "what the user did: a code from workloads.ACTIONS"),
        Field("scenario", "uint8", "where it happened: a code from workloads.SCENARIOS"),
        Field("dwell_ms", "uint32", "time spent on the item in milliseconds (0 if unknown)"),
        Field("category", "uint16", "the item's category (at most 65,536 categories)"),
        Field("author_id", "uint32", "dense index of the item's author"),
    ],
    time_field="ts",
    name="default",
)
