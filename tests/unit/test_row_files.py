"""Reading a stage's input rows a slice at a time, and the chunks a spooled stage writes and assembles."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sppo_ray.orchestration.chunks import StageChunks
from sppo_ray.orchestration.rundir import RunDir
from sppo_ray.row_files import ParquetRows, TableRows, aligned_slices

pytestmark = pytest.mark.unit


def _rows(n: int) -> pa.Table:
    return pa.table({"prompt_id": [f"p{i:03d}" for i in range(n)], "v": list(range(n))})


def test_a_files_rows_come_in_slices_of_the_asked_size_and_order(tmp_path):
    pq.write_table(_rows(23), tmp_path / "f.parquet", row_group_size=5)
    rows = ParquetRows(str(tmp_path / "f.parquet"))
    assert rows.num_rows == 23 and rows.column("v").to_pylist() == list(range(23))
    slices = list(rows.slices(10, ["v"]))
    assert [s.num_rows for s in slices] == [10, 10, 3] and slices[0].column_names == ["v"]
    assert pa.concat_tables(slices).column("v").to_pylist() == list(range(23))
    assert [s.num_rows for s in TableRows(_rows(23)).slices(10)] == [10, 10, 3]


def test_aligned_slices_end_at_each_key_slices_last_row_and_skip_nothing():
    rows = _rows(20)
    keys = rows.filter(pa.array([i % 3 != 0 for i in range(20)]))  # p001 p002 p004 ... p019
    parts = [keys.slice(0, 4), keys.slice(4, 4), keys.slice(8)]
    got = list(aligned_slices(TableRows(rows), parts, "prompt_id", read_rows=3))
    for part, run in zip(parts, got):
        assert run.column("prompt_id")[-1] == part.column("prompt_id")[-1]
        assert set(part.column("prompt_id").to_pylist()) <= set(run.column("prompt_id").to_pylist())
    assert pa.concat_tables(got).equals(rows)  # every row once: runs meet end to end
    with pytest.raises(KeyError, match="'zz' is not among the rows"):
        list(aligned_slices(TableRows(rows), [pa.table({"prompt_id": ["zz"]})], "prompt_id", read_rows=3))


@pytest.mark.parametrize("every", [0, 7])
def test_a_spooled_stage_assembles_the_file_a_whole_table_writes_whatever_the_arrival_order(tmp_path, every):
    """Blocks arrive in completion order; the final file is in prompt order with the row groups RunDir writes, so
    it is byte for byte the file of the table written whole. Without chunk_prompts nothing enters the manifest."""
    table = _rows(2500)
    rd = RunDir(str(tmp_path / "run"))
    expected = rd.write_parquet("whole.parquet", table)
    chunks = StageChunks(rd, 0, "generate", every, {"x": 1}, table.schema, spool=True)
    blocks = [table.slice(i, 50) for i in range(0, 2500, 50)]
    random.Random(0).shuffle(blocks)
    for block in blocks:
        chunks.add(block)
    digest, rows = chunks.assemble("round_0/responses.parquet", table.column("prompt_id").to_pylist())
    assert (digest, rows) == (expected, 2500)
    assert rd.read_bytes("round_0/responses.parquet") == rd.read_bytes("whole.parquet")
    assert ("round_0/generate" in rd.manifest().get("chunks", {})) == bool(every)
    chunks.clear()
    assert not rd.exists("round_0/chunks_generate")


def test_a_resumed_spooled_stage_takes_the_recorded_chunks_and_skips_a_changed_one(tmp_path):
    table = _rows(40)
    rd = RunDir(str(tmp_path / "run"))
    first = StageChunks(rd, 0, "generate", 10, {"x": 1}, table.schema, spool=True)
    for start in range(0, 30, 10):  # three chunks recorded, then the driver dies
        first.add(table.slice(start, 10))
    rd.write_bytes("round_0/chunks_generate/00002.parquet", b"not the chunk")
    again = StageChunks(rd, 0, "generate", 10, {"x": 1}, table.schema, spool=True)
    done = again.done_ids(40)
    assert done == {f"p{i:03d}" for i in (*range(10), *range(20, 30))}
    again.add(table.filter(pa.array([pid not in done for pid in table.column("prompt_id").to_pylist()])))
    again.assemble("round_0/responses.parquet", table.column("prompt_id").to_pylist())
    assert rd.read_parquet("round_0/responses.parquet").equals(table)
    other = StageChunks(rd, 0, "generate", 10, {"x": 2}, table.schema, spool=True)  # other inputs: nothing reused
    assert other.done_ids(40) == set()


def test_a_prompt_in_two_chunks_is_assembled_once(tmp_path):
    """A recorded chunk unreadable at one resume (its prompts generated again) and readable at the next: both
    chunks hold those prompts, and the file holds each once."""
    table = _rows(30)
    rd = RunDir(str(tmp_path / "run"))
    chunks = StageChunks(rd, 0, "generate", 10, {"x": 1}, table.schema, spool=True)
    for start in (0, 10, 0, 20):  # rows 0-9 twice
        chunks.add(table.slice(start, 10))
    chunks.assemble("round_0/responses.parquet", table.column("prompt_id").to_pylist())
    assert rd.read_parquet("round_0/responses.parquet").equals(table)
