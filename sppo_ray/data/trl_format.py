"""The round's training set in TRL's conversational preference format (``round_t/train_trl.parquet``).

``train.parquet`` keeps uclaml/SPPO's columns (``prompt`` a string, ``chosen``/``rejected`` whole conversations),
which TRL's ``DPOTrainer`` rejects. TRL reads a preference row as ``prompt`` = the chat up to the last user turn,
``chosen``/``rejected`` = a list holding only the assistant turn. The SPPO probabilities ride along as extra
columns (TRL ignores them; an SPPO trainer built on TRL can read them).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sppo_ray.arrow_lists import flat_lists, split_last

__all__ = ["TRL_SCHEMA", "trl_preference_table"]

_MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
# Columns of train_trl.parquet.
TRL_SCHEMA = pa.schema(
    [
        ("prompt", _MESSAGES),  # chat turns up to and including the last user turn
        ("chosen", _MESSAGES),  # [{"role": "assistant", "content": winner}]
        ("rejected", _MESSAGES),  # [{"role": "assistant", "content": loser}]
        ("chosen_probs", pa.float64()),  # P(y_w ≻ y_l)
        ("chosen_probs_win", pa.float64()),  # win rate of y_w against π_t
        ("chosen_probs_lose", pa.float64()),  # win rate of y_l against π_t
        ("prompt_id", pa.string()),
        ("policy_version", pa.int64()),
    ]
)


def trl_preference_table(train: pa.Table) -> pa.Table:
    """``train.parquet``'s rows in TRL's conversational preference format (same rows, same order), built from the
    chats' offsets (sppo_ray/arrow_lists.py): no answer becomes a Python object.

    Raises:
        ValueError: a row whose chosen or rejected conversation does not end with an assistant turn (names it).
    """
    split = {}
    for side in ("chosen", "rejected"):
        turns, starts, lengths = flat_lists(train.column(side))
        roles = pc.struct_field(turns, "role").to_numpy(zero_copy_only=False)
        last = roles[np.maximum(starts + lengths - 1, 0)] if len(turns) else np.array([None] * len(lengths))
        if (bad := np.flatnonzero((lengths == 0) | (last != "assistant"))).size:
            n = int(bad[0])
            raise ValueError(f"train.parquet row {n} (prompt_id {train.column('prompt_id')[n].as_py()}): {side} "
                             "does not end with an assistant turn")
        split[side] = split_last(train.column(side))
    columns = {"prompt": split["chosen"][0], "chosen": split["chosen"][1], "rejected": split["rejected"][1],
               **{name: train.column(name) for name in TRL_SCHEMA.names[3:]}}
    return pa.table([columns[f.name].cast(f.type) for f in TRL_SCHEMA], schema=TRL_SCHEMA)
