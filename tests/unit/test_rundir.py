"""The run directory (sppo_ray/orchestration/rundir.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from sppo_ray.orchestration.rundir import ROW_GROUP_ROWS, RunDir, changed_keys, package_versions

pytestmark = pytest.mark.unit


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_parquet_round_trip(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    table = pa.table({"prompt_id": ["a", "b"], "x": [1.5, -2.0], "ids": [[1, 2], [3]]})
    digest = rd.write_parquet("round_0/responses.parquet", table)
    assert len(digest) == 64
    assert rd.exists("round_0/responses.parquet")
    back = rd.read_parquet("round_0/responses.parquet")
    assert back.equals(table)


def test_a_tables_bytes_on_disk_do_not_depend_on_how_its_rows_were_chunked(tmp_path):
    # a resumed stage's table is chunked otherwise than an undisturbed one's (its old chunks, then new blocks)
    rd = RunDir(str(tmp_path / "run"))
    n = 3 * ROW_GROUP_ROWS + 7
    table = pa.table({"prompt_id": [f"p{i}" for i in range(n)], "text": ["x" * (i % 97) for i in range(n)]})
    whole = rd.write_parquet("whole.parquet", table)
    for size in (64, 37, ROW_GROUP_ROWS + 1):
        parts = pa.concat_tables([table.slice(i, size) for i in range(0, n, size)])
        assert rd.write_parquet(f"parts_{size}.parquet", parts) == whole
    assert rd.read_parquet("whole.parquet").equals(table)
    assert rd.write_parquet("empty.parquet", table.schema.empty_table())
    assert rd.read_parquet("empty.parquet").num_rows == 0


def test_json_round_trip_and_overwrite(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    obj = {"a": 1, "b": [1, 2.5, "x"], "c": {"d": None}}
    rd.write_json("sub/dir/x.json", obj)
    assert rd.read_json("sub/dir/x.json") == obj
    rd.write_json("sub/dir/x.json", {"a": 2})  # overwriting an existing file
    assert rd.read_json("sub/dir/x.json") == {"a": 2}


def test_write_bytes_hash(tmp_path):
    rd = RunDir(str(tmp_path))
    # sha256(b"abc") is the FIPS 180-2 test vector
    assert rd.write_bytes("f.bin", b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert rd.read_bytes("f.bin") == b"abc"


def test_no_tmp_files_left(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_parquet("a.parquet", pa.table({"x": [1]}))
    rd.write_json("b.json", {"x": 1})
    rd.write_json("b.json", {"x": 2})
    rd.append_jsonl("c.jsonl", [{"n": 1}])
    rd.append_jsonl("c.jsonl", [{"n": 2}, {"n": 3}])
    rd.record(0, "generate", outputs={"responses": "a.parquet"}, seconds=1.0)
    files = _files(tmp_path / "run")
    assert files == ["a.parquet", "b.json", "c.jsonl", "manifest.json"]
    assert not any(f.endswith(".tmp") for f in files)
    assert [json.loads(line) for line in rd.read_bytes("c.jsonl").decode().splitlines()] == [
        {"n": 1},
        {"n": 2},
        {"n": 3},
    ]


def test_record_then_done(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    assert rd.done(0, "generate") is None
    rd.record(0, "generate", outputs={"responses": "round_0/responses.parquet"}, seconds=12.34567, rows=24)
    rec = rd.done(0, "generate")
    assert rec["outputs"] == {"responses": "round_0/responses.parquet"}
    assert rec["seconds"] == 12.346  # rounded to 3 decimals
    assert rec["rows"] == 24
    assert rec["round"] == 0 and rec["stage"] == "generate"
    assert rd.done(0, "judge") is None
    assert rd.done(1, "generate") is None
    # a second stage keeps the first
    rd.record(0, "judge", outputs={}, seconds=0.5)
    assert rd.done(0, "generate")["rows"] == 24
    # persisted: a new RunDir on the same path sees it
    assert RunDir(str(tmp_path / "run")).done(0, "judge")["seconds"] == 0.5


def test_manifest_has_package_versions(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    assert rd.manifest()["packages"]["pyarrow"] == pa.__version__
    rd.record(0, "generate", outputs={}, seconds=1.0)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["packages"]["pyarrow"] == pa.__version__
    assert manifest["packages"] == package_versions()
    assert "torch" in manifest["packages"]
    assert "round_0/generate" in manifest["stages"]


def test_record_round(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.record_round(1, {"loss": 0.5})
    assert rd.manifest()["rounds"] == {"1": {"loss": 0.5}}


def test_config_round_trip(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    cfg = {"name": "x", "training": {"beta": 0.001}}
    rd.write_config(cfg)
    assert rd.read_config() == cfg


def test_changed_keys_nested():
    old = {"name": "a", "training": {"beta": 0.001, "lr": 5e-7}, "generation": {"k": 5}}
    new = {"name": "a", "training": {"beta": 0.01, "lr": 5e-7}, "generation": {"k": 3}, "data": {"seed": 1}}
    assert changed_keys(old, new) == [
        "data.seed: None -> 1",
        "generation.k: 5 -> 3",
        "training.beta: 0.001 -> 0.01",
    ]


def test_changed_keys_strings_and_equal():
    assert changed_keys({"run_dir": "runs/a"}, {"run_dir": "runs/b"}) == ["run_dir: 'runs/a' -> 'runs/b'"]
    same = {"a": {"b": {"c": 1}}, "d": [1, 2]}
    assert changed_keys(same, json.loads(json.dumps(same))) == []
    assert changed_keys({}, {}) == []


class _CrashOnMove:
    """The run dir's filesystem, except that the process 'dies' when moving a finished temp file into place."""

    def __init__(self, fs):
        self._fs = fs

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dest):
        raise RuntimeError("killed between writing the temp file and moving it into place")


def test_crash_while_replacing_keeps_previous_version(tmp_path):
    # Files are "written to a temporary name and moved into place": a crash before the move must leave the previous
    # version readable. pyarrow's move replaces an existing file atomically, so nothing needs deleting first.
    rd = RunDir(str(tmp_path / "run"))
    rd.record(0, "generate", outputs={"responses": "round_0/responses.parquet"}, seconds=1.0)
    real_fs = rd.fs
    rd.fs = _CrashOnMove(real_fs)
    with pytest.raises(RuntimeError, match="killed"):
        rd.record(0, "judge", outputs={"tables": "round_0/tables.parquet"}, seconds=2.0)
    rd.fs = real_fs
    # the manifest written before the crash still exists and still records the finished stage
    assert rd.exists("manifest.json")
    assert rd.done(0, "generate") is not None


def test_a_parquet_file_written_a_table_at_a_time_is_their_concatenation(tmp_path):
    import hashlib

    import pyarrow.parquet as pq

    rd = RunDir(str(tmp_path / "run"))
    parts = [pa.table({"i": list(range(s, s + 3)), "ids": [[s]] * 3}) for s in (0, 3, 6)]
    with rd.parquet_writer("round_0/train.parquet", parts[0].schema) as out:
        for part in parts:
            out.write(part)
    assert out.rows == 9 and rd.read_parquet("round_0/train.parquet").equals(pa.concat_tables(parts))
    assert out.digest == hashlib.sha256((tmp_path / "run/round_0/train.parquet").read_bytes()).hexdigest()
    assert pq.ParquetFile(tmp_path / "run/round_0/train.parquet").num_row_groups == 3
    # one table: the same bytes as pyarrow's own write_table
    digest = rd.write_parquet("one.parquet", parts[0])
    pq.write_table(parts[0], tmp_path / "pyarrow.parquet")
    assert digest == hashlib.sha256((tmp_path / "pyarrow.parquet").read_bytes()).hexdigest()


def test_a_parquet_file_whose_writer_fails_is_not_committed(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    with pytest.raises(KeyError):
        with rd.parquet_writer("round_0/train.parquet", pa.schema([("i", pa.int64())])) as out:
            out.write(pa.table({"i": [1]}))
            raise KeyError("judge found nothing")
    assert _files(tmp_path / "run") == []
