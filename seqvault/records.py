"""Reading stored records, and the one check of a record against the index entry that points at it.

Reads (``get``, ``get_many``), merges (which read the stored sequence they extend), reclamation
(which copies records forward) and ``seqvault verify`` all read records here. Each record read is
checked against its index entry: the user id in its header and the checksum the index recorded
must match (a stale or misdirected entry would otherwise return another user's events), then the
codec checks the record's own checksums as it decodes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from seqvault.codec import CHECKSUM_SIZE, decode_record, decode_records, parse_header, record_checksum_ok
from seqvault.datafile import DataFile
from seqvault.errors import CorruptionError
from seqvault.schema import Schema

_USER_AT = 8  # the user id's offset in a record header (see seqvault.codec)


def entry_problem(rec: np.ndarray, user_id: int, length: int, count: int, checksum: int) -> str | None:
    """Why the record bytes ``rec`` do not match their index entry, or None if they do."""
    try:
        header = parse_header(rec)
    except CorruptionError as e:
        return str(e)
    if (header.user_id, header.length, header.count) != (user_id, length, count):
        return (f"record header (user {header.user_id}, {header.length} bytes, {header.count} events) does not "
                f"match the index (user {user_id}, {length} bytes, {count} events)")
    if not record_checksum_ok(rec):
        return "record checksum mismatch"
    if int.from_bytes(rec[length - CHECKSUM_SIZE:length].tobytes(), "little") != checksum:
        return "record checksum differs from the one the index recorded"
    return None


def read_raw(files: Mapping[int, DataFile], file_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Records (one pread each) packed into one buffer; returns (buffer, record start offsets + end)."""
    rec_offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=rec_offsets[1:])
    buf = np.empty(int(rec_offsets[-1]), np.uint8)
    for i in range(len(lengths)):
        files[int(file_ids[i])].read_into(buf[rec_offsets[i]:rec_offsets[i + 1]], int(offsets[i]))
    return buf, rec_offsets


def _gather_le(buf: np.ndarray, positions: np.ndarray, nbytes: int) -> np.ndarray:
    """The little-endian unsigned ``nbytes``-byte integer at each of ``positions`` (no Python loop)."""
    b = buf[positions.astype(np.int64)[:, None] + np.arange(nbytes)].astype(np.uint64)
    return (b << (np.arange(nbytes, dtype=np.uint64) * np.uint64(8))).sum(axis=1, dtype=np.uint64)


def trailing_checksums(buf: np.ndarray, rec_offsets: np.ndarray) -> np.ndarray:
    """The CRC-32 each record in ``buf`` ends with (what the index keeps), as uint64."""
    return _gather_le(buf, rec_offsets[1:] - CHECKSUM_SIZE, CHECKSUM_SIZE)


def first_mismatch(buf: np.ndarray, rec_offsets: np.ndarray, users: np.ndarray, checksums: np.ndarray) -> int:
    """Index of the first record whose header user or trailing checksum differs from the index; -1 if none.

    Vectorised gathers of 12 bytes per record: far cheaper than the decode that follows.
    """
    if len(users) == 0:
        return -1
    starts = rec_offsets[:-1]
    ends = rec_offsets[1:]
    if (ends - starts < _USER_AT + 8 + CHECKSUM_SIZE).any():
        return int(np.flatnonzero(ends - starts < _USER_AT + 8 + CHECKSUM_SIZE)[0])
    uid = _gather_le(buf, starts + _USER_AT, 8)
    bad = (uid != users.astype(np.uint64)) | (trailing_checksums(buf, rec_offsets) != checksums.astype(np.uint64))
    return int(np.flatnonzero(bad)[0]) if bad.any() else -1


def read_records(files: Mapping[int, DataFile], entries: object, idx: np.ndarray | None, schema: Schema,
                 fields: list[str], keep: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read and decode the records of ``entries`` (an IndexEntries; rows ``idx``, default all) as CSR.

    Raises CorruptionError naming the data file, offset and user of the first bad record.
    """
    sel = slice(None) if idx is None else idx
    file_ids = np.asarray(entries.file_id)[sel]
    offsets = np.asarray(entries.offset)[sel]
    lengths = np.asarray(entries.length)[sel]
    users = np.asarray(entries.user_id)[sel]
    if keep == 0 or len(lengths) == 0:
        return np.zeros(len(lengths) + 1, np.int64), schema.empty_columns(fields)
    buf, rec_offsets = read_raw(files, file_ids, offsets, lengths)
    bad = first_mismatch(buf, rec_offsets, users, np.asarray(entries.checksum)[sel])
    try:
        if bad >= 0:
            raise CorruptionError("")
        # decode_records takes each record's start offset (n entries, not n + 1).
        return decode_records(buf, rec_offsets[:-1], schema, fields=fields, last_n=keep)
    except CorruptionError:
        # Name the file and file offset of the first bad record, not a position in our buffer.
        for i in range(len(lengths)):
            f = files[int(file_ids[i])]
            rec = buf[rec_offsets[i]:rec_offsets[i + 1]]
            why = entry_problem(rec, int(users[i]), int(lengths[i]), int(np.asarray(entries.count)[sel][i]),
                                int(np.asarray(entries.checksum)[sel][i]))
            if why is not None:
                raise CorruptionError(f"{why}; run `seqvault verify` and delete or restore the user",
                                      path=str(f.path), offset=int(offsets[i]), user_id=int(users[i])) from None
            decode_record(rec, schema, fields=fields, last_n=keep, path=str(f.path), offset=int(offsets[i]))
        raise


def read_one(dfile: DataFile, entry: object, schema: Schema, fields: list[str], keep: int) -> dict[str, np.ndarray]:
    """One user's record (the single-user read path: no batch machinery)."""
    raw = dfile.read(int(entry.offset), int(entry.length))
    length = int(entry.length)
    if length < _USER_AT + 8 + CHECKSUM_SIZE or \
            int.from_bytes(raw[_USER_AT:_USER_AT + 8].tobytes(), "little") != int(entry.user_id) or \
            int.from_bytes(raw[length - CHECKSUM_SIZE:length].tobytes(), "little") != int(entry.checksum):
        why = entry_problem(raw, int(entry.user_id), length, int(entry.count), int(entry.checksum))
        raise CorruptionError(f"{why}; run `seqvault verify` and delete or restore the user",
                              path=str(dfile.path), offset=int(entry.offset), user_id=int(entry.user_id))
    return decode_record(raw, schema, fields=fields, last_n=keep, path=str(dfile.path),
                         offset=int(entry.offset), expect_user=int(entry.user_id))


__all__ = ["entry_problem", "first_mismatch", "read_one", "read_raw", "read_records", "trailing_checksums"]
