"""Prompt sets: loading (JSONL, Parquet, HF ``datasets`` directories), hygiene, and per-round splits.

Rows that cannot be used (empty, duplicate id, malformed, instructions that cannot be checked) are skipped, counted
and returned as :class:`Reject` records with a reason, so a run continues and the user can see what was dropped.

A row may carry verifiable instructions (``instructions: [{"id": "punctuation:no_comma", "kwargs": {}}, ...]``, or
IFEval's own ``instruction_id_list`` + ``kwargs`` columns) and a ``split`` of "train" or "eval"; rows marked "eval"
are the only ones held out for evaluation and never enter a round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from sppo_ray.instructions import Instruction, InstructionError, instructions_to_json, parse_instructions

__all__ = [
    "Prompt",
    "PromptLoadError",
    "PromptSet",
    "Reject",
    "load_prompts",
    "split_prompts",
]

EMBEDDED_DIR = Path(__file__).parent / "prompts"


class PromptLoadError(ValueError):
    """The prompt source cannot be read at all (missing file, unknown format, no usable rows)."""


@dataclass(frozen=True)
class Prompt:
    # Stable id: the row's `id`/`prompt_id` if given, else a hash of its messages.
    id: str
    # Chat messages up to and including the last user turn: ({"role": ..., "content": ...}, ...).
    messages: tuple[dict[str, str], ...]
    # Verifiable instructions the response must follow (judge.kind verifier, instruction-following evaluation).
    instructions: tuple[Instruction, ...] = ()
    # "eval": held out for evaluation only; "train": never held out; "": either (the source marks no splits).
    split: str = ""

    @property
    def instructions_json(self) -> str:
        """The instructions as they travel with a row to the judges ("" for none)."""
        return instructions_to_json(self.instructions)


@dataclass(frozen=True)
class Reject:
    # Where the row came from (file row number, 0-based) and its id if it had one.
    row: int
    id: str
    # Why it was skipped, e.g. "empty prompt", "duplicate id p0003 (first at row 2)".
    reason: str
    # Which stage rejected it: "load" or "generation".
    stage: str = "load"


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]
    rejects: tuple[Reject, ...]
    source: str


def _messages_from_row(row: dict[str, Any]) -> tuple[dict[str, str], ...]:
    """The prompt turns of a row: a `messages` chat (trailing assistant turns dropped) or a `prompt` string."""
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, (list, tuple)) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError("messages must be a list of {role, content} strings")
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
        if not turns or turns[-1]["role"] != "user":
            raise ValueError("messages have no user turn")
        if not turns[-1]["content"].strip():
            raise ValueError("empty prompt")
        return tuple(turns)
    prompt = row.get("prompt")
    if prompt is None:
        raise ValueError("row has neither a 'prompt' nor a 'messages' field")
    if not isinstance(prompt, str):
        raise ValueError(f"'prompt' must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("empty prompt")
    return ({"role": "user", "content": prompt},)


def _instructions_from_row(row: dict[str, Any]) -> tuple[Instruction, ...]:
    """A row's instructions: ``instructions`` objects, or IFEval's parallel ``instruction_id_list`` and ``kwargs``."""
    if row.get("instructions") is not None:
        return parse_instructions(row["instructions"])
    ids = row.get("instruction_id_list")
    if ids is None:
        return ()
    kwargs = row.get("kwargs") or [{}] * len(ids)
    if not isinstance(ids, (list, tuple)) or not isinstance(kwargs, (list, tuple)) or len(kwargs) != len(ids):
        raise InstructionError("instruction_id_list and kwargs must be lists of the same length")
    return parse_instructions([{"id": i, "kwargs": k} for i, k in zip(ids, kwargs)])


def _split_from_row(row: dict[str, Any]) -> str:
    split = row.get("split")
    if split is None:
        return ""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return split


def _row_id(row: dict[str, Any], messages: tuple[dict[str, str], ...]) -> str:
    for key in ("id", "prompt_id"):
        if row.get(key) is not None and str(row[key]).strip():
            return str(row[key])
    digest = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return f"h{digest[:12]}"


def _iter_jsonl(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                yield None
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                yield ValueError(f"not valid JSON ({err.msg})")


def _iter_arrow_tables(tables: Iterable[Any]) -> Iterator[Any]:
    for table in tables:
        yield from table.to_pylist()


def _iter_hf_dataset_dir(path: Path) -> Iterator[Any]:
    """Rows of a `datasets.save_to_disk` directory (Arrow stream files), read with pyarrow alone."""
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():  # a DatasetDict: take the "train" split, else the first one
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        path = path / ("train" if "train" in splits else splits[0])
    state = json.loads((path / "state.json").read_text())
    for entry in state["_data_files"]:
        with pa.memory_map(str(path / entry["filename"])) as source:
            yield from _iter_arrow_tables([pa.ipc.open_stream(source).read_all()])


def _raw_rows(source: str) -> Iterator[Any]:
    if source.startswith("embedded:"):
        path = EMBEDDED_DIR / f"{source.split(':', 1)[1]}.jsonl"
        if not path.is_file():
            raise PromptLoadError(f"unknown embedded prompt set {source!r}")
        return _iter_jsonl(path)
    path = Path(source).expanduser()
    if not path.exists():
        raise PromptLoadError(f"prompt file {source!r} does not exist")
    if path.is_dir():
        if not (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise PromptLoadError(f"prompt directory {source!r} is not a saved HF datasets directory")
        return _iter_hf_dataset_dir(path)
    if path.suffix in (".jsonl", ".json"):
        return _iter_jsonl(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return _iter_arrow_tables(pq.ParquetFile(path).iter_batches())
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise PromptLoadError(f"cannot read Parquet prompt file {source!r}: {err}") from None
    raise PromptLoadError(f"prompt file {source!r}: unknown format (use .jsonl, .parquet or an HF datasets directory)")


def load_prompts(source: str) -> PromptSet:
    """Load a prompt set, skipping and recording unusable rows.

    Raises:
        PromptLoadError: the source is missing, unreadable, or yields no usable prompt.
    """
    prompts: list[Prompt] = []
    rejects: list[Reject] = []
    first_row: dict[str, int] = {}
    try:
        for index, row in enumerate(_raw_rows(source)):
            if row is None:
                continue  # blank line in JSONL
            if isinstance(row, Exception):
                rejects.append(Reject(index, "", f"malformed row: {row}"))
                continue
            if not isinstance(row, dict):
                rejects.append(Reject(index, "", f"malformed row: expected an object, got {type(row).__name__}"))
                continue
            try:
                messages = _messages_from_row(row)
                split = _split_from_row(row)
                instructions = _instructions_from_row(row)
            except InstructionError as err:
                rejects.append(Reject(index, str(row.get("id", row.get("prompt_id", "")) or ""),
                                      f"bad instructions: {err}"))
                continue
            except ValueError as err:
                reason = str(err) if str(err) == "empty prompt" else f"malformed row: {err}"
                rejects.append(Reject(index, str(row.get("id", row.get("prompt_id", "")) or ""), reason))
                continue
            pid = _row_id(row, messages)
            if pid in first_row:
                rejects.append(Reject(index, pid, f"duplicate id {pid} (first at row {first_row[pid]})"))
                continue
            first_row[pid] = index
            prompts.append(Prompt(pid, messages, instructions, split))
    except (OSError, UnicodeDecodeError) as err:
        raise PromptLoadError(f"cannot read prompt source {source!r}: {err}") from None
    if not prompts:
        raise PromptLoadError(f"prompt source {source!r} has no usable prompts ({len(rejects)} rows rejected)")
    return PromptSet(tuple(prompts), tuple(rejects), source)


def split_prompts(
    prompts: tuple[Prompt, ...], *, per_iteration: int, iterations: int, eval_size: int, seed: int
) -> tuple[list[list[Prompt]], list[Prompt]]:
    """Deterministic disjoint splits: one per round, plus a held-out evaluation split.

    The order depends only on the prompt ids and the seed, so adding rows elsewhere in a file does not reshuffle.
    When the source marks rows ``split: eval``, the held-out split is drawn from those rows only and the rounds from
    the others (a set without marks splits exactly as before).

    Raises:
        PromptLoadError: fewer prompts than eval_size + iterations x per_iteration (or, with marked rows, fewer
            eval rows than eval_size or fewer other rows than the rounds need).
    """
    ordered = sorted(prompts, key=lambda p: p.id)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    marked = [p for p in shuffled if p.split == "eval"]
    if marked:
        return _marked_splits(shuffled, marked, per_iteration, iterations, eval_size)
    need = eval_size + iterations * per_iteration
    if len(prompts) < need:
        raise PromptLoadError(
            f"need {need} prompts ({eval_size} held out + {iterations} rounds x {per_iteration}), "
            f"the source has {len(prompts)} usable ones; lower data.prompts_per_iteration or data.eval_prompts"
        )
    held_out = shuffled[:eval_size]
    rounds = [
        shuffled[eval_size + t * per_iteration : eval_size + (t + 1) * per_iteration] for t in range(iterations)
    ]
    return rounds, held_out


def _marked_splits(shuffled: list[Prompt], marked: list[Prompt], per_iteration: int, iterations: int,
                   eval_size: int) -> tuple[list[list[Prompt]], list[Prompt]]:
    train = [p for p in shuffled if p.split != "eval"]
    if len(marked) < eval_size:
        raise PromptLoadError(f"data.eval_prompts is {eval_size} but the source marks only {len(marked)} rows "
                              "split: eval; lower data.eval_prompts")
    if len(train) < iterations * per_iteration:
        raise PromptLoadError(
            f"need {iterations * per_iteration} training prompts ({iterations} rounds x {per_iteration}), the source "
            f"has {len(train)} usable ones not marked split: eval; lower data.prompts_per_iteration"
        )
    rounds = [train[t * per_iteration : (t + 1) * per_iteration] for t in range(iterations)]
    return rounds, marked[:eval_size]
