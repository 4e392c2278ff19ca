"""The round's training set in TRL's conversational preference format (``round_t/train_trl.parquet``).

``train.parquet`` keeps uclaml/SPPO's columns (``prompt`` a string, ``chosen``/``rejected`` whole conversations),
which TRL's ``DPOTrainer`` rejects. TRL reads a preference row as ``prompt`` = the chat up to the last user turn,
``chosen``/``rejected`` = a list holding only the assistant turn. The SPPO probabilities ride along as extra
columns (TRL ignores them; an SPPO trainer built on TRL can read them).
"""

from __future__ import annotations

import pyarrow as pa

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
    """``train.parquet``'s rows in TRL's conversational preference format (same rows, same order).

    Raises:
        ValueError: a row whose chosen or rejected conversation does not end with an assistant turn (names it).
    """
    out = []
    for n, row in enumerate(train.select(["chosen", "rejected", "chosen_probs", "chosen_probs_win",
                                         "chosen_probs_lose", "prompt_id", "policy_version"]).to_pylist()):
        for side in ("chosen", "rejected"):
            if not row[side] or row[side][-1]["role"] != "assistant":
                raise ValueError(f"train.parquet row {n} (prompt_id {row['prompt_id']}): {side} does not end with "
                                 "an assistant turn")
        out.append({**row, "prompt": row["chosen"][:-1], "chosen": row["chosen"][-1:],
                    "rejected": row["rejected"][-1:]})
    return pa.Table.from_pylist(out, schema=TRL_SCHEMA)
