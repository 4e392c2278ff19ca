"""A stage's chunks (sppo_ray/orchestration/chunks.py): rows on disk as they arrive, the final file in prompt order."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from sppo_ray.orchestration.chunks import StageChunks
from sppo_ray.orchestration.rundir import ROW_GROUP_ROWS, RunDir

pytestmark = pytest.mark.unit

SCHEMA = pa.schema([("prompt_id", pa.string()), ("text", pa.string())])


def _rows(ids: range) -> pa.Table:
    return pa.table({"prompt_id": [f"p{i:05d}" for i in ids], "text": ["x" * (i % 53) for i in ids]}, schema=SCHEMA)


def _blocks(n: int, size: int, swap: bool) -> list[pa.Table]:
    """One call's rows each, consecutive prompts; with ``swap`` each pair of neighbours arrives the other way round."""
    blocks = [_rows(range(i, min(i + size, n))) for i in range(0, n, size)]
    if swap:
        for i in range(0, len(blocks) - 1, 2):
            blocks[i], blocks[i + 1] = blocks[i + 1], blocks[i]
    return blocks


def test_an_assembled_stage_file_is_the_same_bytes_however_its_rows_arrived(tmp_path):
    n = 2 * ROW_GROUP_ROWS + 11
    order = [f"p{i:05d}" for i in range(n)]
    whole = RunDir(str(tmp_path / "whole")).write_parquet("round_0/responses.parquet", _rows(range(n)))
    for size, every, swap in ((64, 100, True), (37, 0, False), (ROW_GROUP_ROWS + 1, 1000, True)):
        rd = RunDir(str(tmp_path / f"run_{size}"))
        chunks = StageChunks(rd, 0, "generate", every, {"x": 1}, SCHEMA, spool=True)
        for block in _blocks(n, size, swap):
            chunks.add(block)
        digest, rows = chunks.assemble("round_0/responses.parquet", order)
        assert (digest, rows) == (whole, n)
        assert rd.read_parquet("round_0/responses.parquet").equals(_rows(range(n)))


def test_a_chunk_is_recorded_once_full_and_its_rows_are_written_as_they_arrive(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_json("manifest.json", {})
    chunks = StageChunks(rd, 0, "judge", 100, {"x": 1}, SCHEMA)
    chunks.add(_rows(range(0, 60)))
    # not recorded yet (a driver stopped now redoes these 60), but already on disk, not in the driver
    assert "chunks" not in rd.manifest()
    assert [p.name for p in (tmp_path / "run" / "round_0" / "chunks_judge").iterdir()] == ["00001.parquet.tmp"]
    chunks.add(_rows(range(60, 120)))
    recorded = rd.manifest()["chunks"]["round_0/judge"]["files"]
    assert [(c["file"], c["rows"]) for c in recorded] == [("round_0/chunks_judge/00001.parquet", 120)]
    # a later execution with the same inputs finds the recorded rows; other inputs find none
    assert StageChunks(rd, 0, "judge", 100, {"x": 1}, SCHEMA).load().equals(_rows(range(120)))
    assert StageChunks(rd, 0, "judge", 100, {"x": 2}, SCHEMA).load() is None


def test_a_recorded_stage_leaves_no_chunk_open_nor_on_disk(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_json("manifest.json", {})
    chunks = StageChunks(rd, 0, "judge", 100, {"x": 1}, SCHEMA)
    for block in (range(0, 100), range(100, 160)):  # a full chunk and 60 rows of the next, as a judged stage ends
        chunks.add(_rows(block))
    chunks.clear()
    folder = tmp_path / "run" / "round_0" / "chunks_judge"
    assert not folder.exists() and not rd.manifest()["chunks"]
    # and no file of it is still open (a deleted one would be written out whenever its writer is collected)
    fds = "/proc/self/fd"
    assert not [link for fd in os.listdir(fds) if str(folder) in (link := _readlink(f"{fds}/{fd}"))]


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # the listing's own descriptor, closed by now
        return ""
