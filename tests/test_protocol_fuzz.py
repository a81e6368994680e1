"""The node's wire protocol under hostile input: >= 10,000 random and mutated frames to a live node.

Each frame goes over its own connection (a bad one may close it). The node must answer with an
error reply or close the connection, never crash, and its store must hold exactly what the
appends it acknowledged wrote: a reference store gets the same acknowledged batches.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storagebench import protocol as p
from storagebench.node import GET, NodeClient, connect
from storagebench.stores import open_store
from workloads import DEFAULT_SCHEMA as SCHEMA

MAX_PAYLOAD = 1 << 16
FRAMES_PER_EXAMPLE = 25
EXAMPLES = 400  # 400 x 25 = 10,000 frames
USERS = np.arange(1, 9, dtype=np.uint64)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with NodeClient("memory", str(tmp_path_factory.mktemp("fuzz")), SCHEMA, {"max_len": 40},
                    max_payload=MAX_PAYLOAD) as client:
        ref = open_store("memory", str(tmp_path_factory.mktemp("ref")), SCHEMA, max_len=40)
        yield client, ref


def batch_payload(draw, n: int) -> bytes:
    uids = np.array(draw(st.lists(st.sampled_from(USERS.tolist()), min_size=n, max_size=n)), np.uint64)
    cols = {f.name: np.array(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), dtype=f.np_dtype)
            for f in SCHEMA.fields}
    return p.encode_batch(SCHEMA, uids, cols)


@st.composite
def valid_frame(draw) -> bytes:
    op = draw(st.sampled_from([p.APPEND, p.BULK_LOAD, p.READ, p.GET, p.FETCH, p.WIRE_DICT, p.CONTROL, 0, 9, 200]))
    req_id = draw(st.integers(1, 1 << 40))
    if op in (p.APPEND, p.BULK_LOAD):
        payload = batch_payload(draw, draw(st.integers(0, 6)))
    elif op in (p.READ, p.GET):
        payload = p.encode_read(np.array(draw(st.lists(st.sampled_from(USERS.tolist()), max_size=4)), np.uint64),
                                draw(st.one_of(st.none(), st.integers(1, 60))))
    elif op == p.FETCH:
        payload = p.encode_fetch(draw(st.sampled_from(USERS.tolist())), draw(st.integers(1, 60)),
                                 draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    elif op == p.WIRE_DICT:
        payload = struct.pack("<I", 3) + draw(st.binary(max_size=64))
    elif op == p.CONTROL:
        name = draw(st.sampled_from([*p.CONTROL_OPS, "close", "shutdown", "__init__", ""]))
        payload = p.encode_json({"op": name}) if draw(st.booleans()) else draw(st.binary(max_size=32))
    else:
        payload = draw(st.binary(max_size=64))
    flags = draw(st.sampled_from([0, 0, p.FLAG_FULL, 0xFFFF]))
    return p.frame(op, req_id, payload, flags)


@st.composite
def mutated_frame(draw) -> bytes:
    data = bytearray(draw(valid_frame()))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "length", "version", "random", "none"]))
    if kind == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    elif kind == "length":
        struct.pack_into("<I", data, 12, draw(st.sampled_from([0, 1, 7, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2**32 - 1])))
    elif kind == "version":
        data[0] = draw(st.integers(0, 255))
    elif kind == "random":
        data = bytearray(draw(st.binary(min_size=1, max_size=80)))
    return bytes(data)


def read_replies(sock: socket.socket) -> list[tuple[int, int, int, bytes]]:
    """Every reply frame until the node closes: (op, status, req_id, body)."""
    sock.settimeout(10)
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    out, pos = [], 0
    while len(buf) - pos >= p.HEADER.size:
        version, op, status, req_id, length = p.HEADER.unpack_from(buf, pos)
        assert version == p.PROTOCOL_VERSION
        out.append((op, status, req_id, bytes(buf[pos + p.HEADER.size + p.TIMES.size: pos + p.HEADER.size + length])))
        pos += p.HEADER.size + length
    assert pos == len(buf), "the node sent a partial frame"
    return out


def sent_frames(data: bytes) -> dict[tuple[int, int], bytes]:
    """(op, req_id) -> payload of each whole, well-formed frame in what was sent (the node's rules)."""
    out, pos = {}, 0
    while len(data) - pos >= p.HEADER.size:
        version, op, _, req_id, length = p.HEADER.unpack_from(data, pos)
        if version != p.PROTOCOL_VERSION or length > MAX_PAYLOAD or len(data) < pos + p.HEADER.size + length:
            break
        out.setdefault((op, req_id), data[pos + p.HEADER.size: pos + p.HEADER.size + length])
        pos += p.HEADER.size + length
    return out


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.one_of(valid_frame(), mutated_frame()), min_size=FRAMES_PER_EXAMPLE,
                       max_size=FRAMES_PER_EXAMPLE))
def test_random_and_mutated_frames_get_an_error_or_a_close_and_change_nothing_unacknowledged(node, frames):
    client, ref = node
    for data in frames:
        sock = connect(client.address)
        try:
            hello = sock.recv(p.HEADER.size)
            assert hello and hello[1] == p.HELLO | p.REPLY
            sock.recv(1 << 16)  # the rest of the greeting
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the node sees the end of the stream, finishes, closes
            replies = read_replies(sock)
        finally:
            sock.close()
        sent = sent_frames(data)
        for op, status, req_id, _ in replies:
            assert op & p.REPLY
            request = sent.get((op & ~p.REPLY, req_id))
            if status == p.STATUS_OK and request is not None and op & ~p.REPLY in (p.APPEND, p.BULK_LOAD):
                uids, cols = p.decode_batch(SCHEMA, request)
                (ref.append if op & ~p.REPLY == p.APPEND else ref.bulk_load)(uids, cols)
    # The node is alive, answers its own client, and holds exactly the acknowledged writes.
    got_off, got = client.call(GET, USERS, None, timeout_s=30)
    want_off, want = ref.get_many(USERS)
    assert got_off.tolist() == want_off.tolist()
    for name in SCHEMA.names:
        assert np.array_equal(got[name], want[name]), name
    assert client.process.is_alive() and client.background_error is None


def test_an_oversized_frame_is_refused_with_a_reason_and_the_connection_closed(node):
    client, _ = node
    sock = connect(client.address)
    sock.recv(1 << 16)
    sock.sendall(p.HEADER.pack(p.PROTOCOL_VERSION, p.APPEND, 0, 5, MAX_PAYLOAD + 1))
    replies = read_replies(sock)
    sock.close()
    assert len(replies) == 1 and replies[0][1] == p.STATUS_ERROR
    assert b"exceeds the limit" in replies[0][3]
    assert client.call("stats", timeout_s=10)["users"] >= 0  # still serving


def test_a_well_formed_request_with_bad_fields_names_the_rule(node):
    client, _ = node
    sock = connect(client.address)
    sock.recv(1 << 16)
    sock.sendall(p.frame(p.READ, 3, struct.pack("<iI", 0, 1) + b"\0" * 8))  # last_n 0
    sock.sendall(p.frame(p.APPEND, 4, struct.pack("<I", 2) + b"\0" * 10))   # too short for 2 events
    sock.shutdown(socket.SHUT_WR)
    replies = {req_id: (status, body) for _, status, req_id, body in read_replies(sock)}
    sock.close()
    assert replies[3][0] == p.STATUS_ERROR and b"last_n" in replies[3][1]
    assert replies[4][0] == p.STATUS_ERROR and b"needs" in replies[4][1]
