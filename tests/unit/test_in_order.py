"""A stage's rows back in prompt order, whatever order its blocks finished in."""

import pyarrow as pa
import pytest

from sppo_ray.actor_pool import in_order

pytestmark = pytest.mark.unit


def _block(ids: list[str]) -> pa.Table:
    return pa.table({"prompt_id": ids, "n": [int(i[1:]) for i in ids]})


def test_blocks_finished_out_of_order_come_back_in_prompt_order_sharing_their_buffers():
    blocks = [_block(["p4", "p5"]), _block(["p0", "p1"]), _block(["p2", "p3"])]  # p6 was rejected
    table = in_order(pa.concat_tables(blocks), "prompt_id", [f"p{i}" for i in range(7)])
    assert table.column("prompt_id").to_pylist() == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert table.column("n").to_pylist() == [0, 1, 2, 3, 4, 5]
    # no copy of the rows: the result's chunks are the blocks' own buffers
    first = table.column("n").chunks[0].buffers()[1]
    assert first.address == blocks[1].column("n").chunks[0].buffers()[1].address


def test_rows_that_blocks_alone_cannot_order_are_moved_row_by_row():
    # a resumed stage's chunk file holds blocks in the order they finished: p2 before p0 inside one block
    mixed = pa.concat_tables([_block(["p2", "p0"]), _block(["p1", "p3"])])
    table = in_order(mixed, "prompt_id", ["p0", "p1", "p2", "p3"])
    assert table.column("prompt_id").to_pylist() == ["p0", "p1", "p2", "p3"]
    assert table.column("n").to_pylist() == [0, 1, 2, 3]


def test_a_prompt_produced_twice_is_an_error():
    with pytest.raises(RuntimeError, match="prompt_id twice"):
        in_order(pa.concat_tables([_block(["p0"]), _block(["p0"])]), "prompt_id", ["p0"])


def test_an_empty_stage_stays_empty():
    empty = _block([]).schema.empty_table()
    assert in_order(empty, "prompt_id", ["p0"]).num_rows == 0
