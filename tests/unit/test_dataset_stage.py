"""The driver's dataset stage (``_dataset``): the training set written in slices is the one built whole."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sppo_ray.bench.paper_round import synthetic_round
from sppo_ray.data.trl_format import trl_preference_table
from sppo_ray.errors import RunStateError
from sppo_ray.judging.stage import build_training_table
from sppo_ray.orchestration import driver
from sppo_ray.orchestration.rundir import RunDir
from sppo_ray.orchestration.session import use_system_arrow_pool
from sppo_ray.row_files import ParquetRows, TableRows

pytestmark = pytest.mark.unit


def _rundir(tmp_path) -> RunDir:
    rd = RunDir(str(tmp_path / "run"))
    for stage in ("generate", "judge"):
        rd.record(0, stage, outputs={}, seconds=0.0)
    return rd


def test_slices_write_the_training_set_built_whole(tmp_path, monkeypatch):
    generated, judged = synthetic_round(30, 3, 4, prompt_tokens=2)
    monkeypatch.setattr(driver, "DATASET_SLICE", 7)  # 30 prompts: slices of 7, 7, 7, 7, 2
    rd = _rundir(tmp_path)
    driver._dataset(0, TableRows(generated), judged, rd)
    whole = build_training_table(generated, judged)
    assert rd.read_parquet("round_0/train.parquet").equals(whole)
    assert rd.read_parquet("round_0/train_trl.parquet").equals(trl_preference_table(whole))
    assert rd.done(0, "dataset")["rows"] == 30


def test_a_round_without_any_preference_stops_and_writes_no_training_set(tmp_path):
    generated, judged = synthetic_round(5, 3, 4, prompt_tokens=2)
    judged = judged.set_column(judged.schema.get_field_index("kept"), "kept",
                               pa.array([[]] * 5, pa.list_(pa.int64())))
    rd = _rundir(tmp_path)
    with pytest.raises(RunStateError, match="round 0: the judge found no preference in any prompt"):
        driver._dataset(0, TableRows(generated), judged, rd)
    assert not rd.exists("round_0/train.parquet") and not rd.exists("round_0/train_trl.parquet")
    assert rd.done(0, "dataset") is None


def test_the_driver_keeps_its_arrow_memory_on_the_system_allocator(tmp_path):
    """Freed pages of Arrow's default pool (mimalloc) stayed resident in the driver; the system allocator's go
    back with ``malloc_trim``. A whole dataset stage leaves nothing allocated there once its tables are dropped."""
    previous = pa.default_memory_pool()
    try:
        use_system_arrow_pool()
        system = pa.system_memory_pool()
        before = system.bytes_allocated()
        generated, judged = synthetic_round(200, 3, 16, prompt_tokens=2)
        assert system.bytes_allocated() - before >= generated.nbytes // 2  # the tables live in the system pool
        driver._dataset(0, TableRows(generated), judged, _rundir(tmp_path))
        del generated, judged
        driver.return_freed_memory()
        assert system.bytes_allocated() - before < 64 * 1024
    finally:
        pa.set_memory_pool(previous)


def test_the_cli_puts_arrows_own_default_pool_on_the_system_allocator_and_leaves_the_roles_theirs():
    """Arrow's C++ code allocates from its default pool, which ``pa.set_memory_pool`` does not change: the CLI
    chooses it before pyarrow loads, and unsets the variable again so that the processes it starts keep mimalloc."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    code = ("import os, sppo_ray.cli, pyarrow as pa; "
            "print(pa.default_memory_pool().backend_name, os.environ.get('ARROW_DEFAULT_MEMORY_POOL'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["system", "None"]
    child = subprocess.run([sys.executable, "-c", "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"],
                           env=env, capture_output=True, text=True, check=True)
    assert child.stdout.strip() != "system"  # a process without the CLI (a role) keeps Arrow's default


def test_the_responses_are_read_from_their_file_as_far_as_each_slice_needs(tmp_path, monkeypatch):
    """The driver's round reads responses.parquet a slice at a time; judged rows are a subsequence (prompts the
    judge could not use are missing), so each slice's responses end where its last prompt is."""
    import pyarrow.parquet as pq

    generated, judged = synthetic_round(30, 3, 4, prompt_tokens=2)
    judged = judged.filter(pa.array([i % 4 != 1 for i in range(30)]))  # 22 of the 30 prompts
    pq.write_table(generated, tmp_path / "responses.parquet", row_group_size=4)
    monkeypatch.setattr(driver, "DATASET_SLICE", 5)
    rd = _rundir(tmp_path)
    driver._dataset(0, ParquetRows(str(tmp_path / "responses.parquet")), judged, rd)
    assert rd.read_parquet("round_0/train.parquet").equals(build_training_table(generated, judged))


_FREED_STAYS = """
import ctypes, os, sys
if sys.argv[1] == "driver":  # what `sppo-ray run` does before it reads its config (which is not there)
    import sppo_ray.cli
    assert sppo_ray.cli.main(["run", "/nonexistent/job.yaml"]) == 2
elif sys.argv[1] == "import":  # a process that only imports the CLI keeps glibc's defaults
    import sppo_ray.cli  # noqa: F401
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
libc.free(libc.malloc(4 << 20))  # glibc's default: the largest block freed so far raises its mmap threshold
before = rss()
blocks, pins = [], []
for _ in range(100):  # a stage's buffers, 50 MB, each with something small after it that stays live
    blocks.append(libc.malloc(512 << 10))
    pins.append(libc.malloc(2048))
for b in blocks:
    ctypes.memset(b, 1, 512 << 10)
for b in blocks:
    libc.free(b)
print((rss() - before) >> 20)
"""


def test_the_cli_driver_hands_back_the_large_blocks_it_frees():
    """A driver's stage allocates and frees large buffers (Arrow on the system allocator, Ray's clients): with
    glibc's defaults the small live blocks between them keep them resident; a driver command bounds the heap
    (``runtime.bound_heap``) so they go back when freed, without waiting for a ``malloc_trim``. Importing the CLI
    alone changes nothing (a test session computing with torch would page-fault on every large block)."""
    import subprocess
    import sys

    kept = {how: int(subprocess.run([sys.executable, "-c", _FREED_STAYS, how], capture_output=True, text=True,
                                    check=True).stdout.split()[-1]) for how in ("driver", "import", "default")}
    assert kept["default"] >= 40  # the yardstick: glibc's defaults keep the 50 MB freed
    assert kept["driver"] <= 2
    assert kept["import"] >= 40
