"""Arrow list columns picked from and reshaped through their offsets, never as Python objects.

A round's big columns are lists: K responses per prompt, their token ids, the chats. At the paper's round (20,000
prompts × 5 answers of ~450 tokens) a responses table holds 45 M token ids; as Python ints in Python lists they
would take ~40 bytes each instead of 4. The driver's dataset stage therefore picks a prompt's chosen and rejected
answers and builds the chats with these helpers, so it holds Arrow buffers only. Pure: no Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["append_item", "flat_lists", "lists_of", "pick", "split_last"]


def flat_lists(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(every row's items end to end, each row's first item's index there, each row's length); a null row has 0."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return pc.list_flatten(column), starts, lengths


def pick(column: pa.Array | pa.ChunkedArray, rows: np.ndarray, items: np.ndarray) -> pa.Array:
    """Item ``items[i]`` of list row ``rows[i]``, for every i. A chunked column is read chunk by chunk, so only the
    picked items are copied, never the whole column.

    Raises:
        IndexError: an item past its row's end (names the row).
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    chunk_of = np.searchsorted(bounds, rows, side="right") - 1
    parts, order = [], []
    for c in np.unique(chunk_of):
        sel = np.flatnonzero(chunk_of == c)
        values, starts, lengths = flat_lists(chunks[c])
        local, want = rows[sel] - bounds[c], items[sel]
        if (bad := np.flatnonzero((want < 0) | (want >= lengths[local]))).size:
            i = int(sel[bad[0]])
            raise IndexError(f"row {int(rows[i])} has {int(lengths[local[bad[0]]])} items, not an item {int(items[i])}")
        parts.append(values.take(pa.array(starts[local] + want)))
        order.append(sel)
    if not parts:
        return pa.array([], column.type.value_type)
    return pa.concat_arrays(parts).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def lists_of(values: pa.Array, lengths: np.ndarray) -> pa.ListArray:
    """``values`` cut into consecutive lists of ``lengths``."""
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def append_item(lists: pa.Array | pa.ChunkedArray, items: pa.Array) -> pa.ListArray:
    """Every row with ``items[i]`` appended at its end (a chat with one more turn)."""
    values, starts, lengths = flat_lists(lists)
    n = len(lengths)
    if len(items) != n:
        raise ValueError(f"{len(items)} items for {n} rows")
    grown = lengths + 1
    row = np.repeat(np.arange(n), grown)
    at = np.arange(int(grown.sum())) - np.repeat(np.cumsum(grown) - grown, grown)  # position within the row
    source = np.where(at < lengths[row], starts[row] + at, len(values) + row)  # the row's items, then its new one
    return lists_of(pa.concat_arrays([values, items.cast(values.type)]).take(pa.array(source)), grown)


def split_last(lists: pa.Array | pa.ChunkedArray) -> tuple[pa.ListArray, pa.ListArray]:
    """(every row without its last item, a one-item list of its last item). Rows must not be empty."""
    values, starts, lengths = flat_lists(lists)
    if (empty := np.flatnonzero(lengths == 0)).size:
        raise ValueError(f"row {int(empty[0])} is empty: it has no last item")
    head = lengths - 1
    row = np.repeat(np.arange(len(lengths)), head)
    at = np.arange(int(head.sum())) - np.repeat(np.cumsum(head) - head, head)
    last = values.take(pa.array(starts + head))
    return lists_of(values.take(pa.array(starts[row] + at)), head), lists_of(last, np.ones(len(lengths), np.int64))
