"""The driver's own work at the paper's round, on synthetic tables of its shape (no engines, no Ray cluster).

At the scale benchmark's settings (16-token answers) the round's tables are a few MB, so whatever the dataset stage
does per token cannot show. The paper's round is 20,000 prompts × K = 5 answers of ~450 tokens: its responses table
alone holds 45 M token ids. This builds a responses table and a judged table of that shape (random token ids and
text, every prompt with a preference), then measures in a fresh process the driver's resident memory over the judged
table it holds while its generation stage spools and assembles the responses, while its own ``_dataset`` builds
and writes train.parquet and train_trl.parquet from them, and the Arrow bytes of the fit's input
(what the driver reads of train.parquet for the fit when the file is small enough for it to read, see
``training.trainer.DRIVER_READ_BYTES``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa

from sppo_ray.arrow_lists import lists_of
from sppo_ray.runtime import process_rss

__all__ = ["measure_dataset_stage", "synthetic_round"]

CHARS_PER_TOKEN = 4
_TEXT = "abcdefghij klmnopqrst uvwxyz ABCDEFG HIJKLMN OPQRSTU VWXYZ 0123456789 .,;:!?"


def synthetic_round(prompts: int, k: int, response_tokens: int, prompt_tokens: int = 100,
                    seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """(responses, judged) tables of one round: ``prompts`` rows of K answers, each exactly ``response_tokens``
    random token ids and ~4 characters of text per token; judged rows hold a random table and keep (winner, loser)."""
    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.judging.stage import JUDGED_SCHEMA

    rng = np.random.default_rng(seed)
    n, samples = prompts, prompts * k
    base = "".join(rng.choice(list(_TEXT), 1 << 20))
    width = response_tokens * CHARS_PER_TOKEN
    starts = rng.integers(0, len(base) - width, samples)
    texts = pa.array([base[s:s + width] for s in starts], pa.string())
    ids = [f"p{i:06d}" for i in range(n)]
    messages = [json.dumps([{"role": "user", "content": base[s:s + prompt_tokens * CHARS_PER_TOKEN]}])
                for s in rng.integers(0, len(base) - prompt_tokens * CHARS_PER_TOKEN, n)]
    token = pa.array(rng.integers(0, 49_152, samples * response_tokens, dtype=np.int32))
    per_prompt = np.full(n, k)
    responses = pa.Table.from_arrays([
        pa.array(ids), pa.array(messages),
        lists_of(pa.array(rng.integers(0, 49_152, n * prompt_tokens, dtype=np.int32)), np.full(n, prompt_tokens)),
        lists_of(texts, per_prompt),
        lists_of(lists_of(token, np.full(samples, response_tokens)), per_prompt),
        lists_of(pa.array(np.full(samples, response_tokens, np.int32)), per_prompt),
        lists_of(pa.array(["length"] * samples), per_prompt),
        pa.array(np.zeros(n, np.int64)), pa.array(np.zeros(n, bool)),
    ], schema=GENERATION_SCHEMA)
    table = rng.random((n, k, k))
    winners = rng.integers(0, k, n)
    losers = (winners + rng.integers(1, k, n)) % k
    judged = pa.Table.from_arrays([
        pa.array(ids), lists_of(pa.array(table.ravel()), np.full(n, k * k)),
        lists_of(pa.array(table.ravel()), np.full(n, k * k)),
        lists_of(pa.array(table.mean(axis=2).ravel()), per_prompt),
        lists_of(pa.array(table.mean(axis=2).ravel()), per_prompt),
        pa.array(np.full(n, k, np.int64)), pa.array(["synthetic"] * n), pa.array(["debiased"] * n),
        pa.array(np.zeros(n, np.int64)), lists_of(pa.array(np.stack([winners, losers], 1).ravel()), np.full(n, 2)),
        pa.array([""] * n),
    ], schema=JUDGED_SCHEMA)
    return responses, judged


def _peak_while(fn: Any, every_s: float = 0.01) -> tuple[Any, int, float]:
    """(fn(), the process's peak RSS while it ran, its seconds), RSS sampled in a thread."""
    peak, stop = [process_rss()], threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            peak[0] = max(peak[0], process_rss())

    thread = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        out = fn()
    finally:
        stop.set()
        thread.join()
    return out, max(peak[0], process_rss()), time.perf_counter() - started


def _write_inputs(folder: str, prompts: int, k: int, response_tokens: int) -> None:
    import pyarrow.parquet as pq

    responses, judged = synthetic_round(prompts, k, response_tokens)
    pq.write_table(responses, f"{folder}/responses.parquet", row_group_size=_BLOCK)
    pq.write_table(judged, f"{folder}/tables.parquet")
    with open(f"{folder}/arrow_bytes.json", "w") as f:
        json.dump({"responses": responses.nbytes, "tables": judged.nbytes}, f)


# Prompts per block as a generation stage's calls return them.
_BLOCK = 64


def _spool_responses(folder: str, rd: Any) -> None:
    """The driver's part of a generation stage: the responses arrive a call's block at a time, in completion
    order (each pair of neighbouring blocks swapped), go to the spooled chunks, and are assembled into
    round_0/responses.parquet in prompt order (``_generate``)."""
    import pyarrow.parquet as pq

    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.orchestration.chunks import StageChunks

    source = pq.ParquetFile(f"{folder}/responses.parquet")
    order = source.read(columns=["prompt_id"]).column(0).to_pylist()
    chunks = StageChunks(rd, 0, "generate", 1000, {}, GENERATION_SCHEMA, spool=True)
    groups = list(range(source.num_row_groups))
    for i in range(0, len(groups) - 1, 2):
        groups[i], groups[i + 1] = groups[i + 1], groups[i]
    for g in groups:
        chunks.add(source.read_row_group(g))
    chunks.assemble("round_0/responses.parquet", order)
    chunks.clear()


def _measure_here(folder: str) -> dict[str, Any]:
    """The driver's part, over the judge's tables it holds: the generation stage's spooling and assembly of the
    responses (``_spool_responses``), then the driver's own dataset stage (``_dataset``: train.parquet and
    train_trl.parquet written into a scratch run directory, the responses read from their file), then the size of
    the fit's input (``training_columns``) beside the whole training set's, and whether the driver reads it."""
    import pyarrow.parquet as pq

    from sppo_ray.orchestration.driver import _dataset
    from sppo_ray.orchestration.rundir import RunDir
    from sppo_ray.row_files import ParquetRows
    from sppo_ray.training.batching import training_columns
    from sppo_ray.training.trainer import DRIVER_READ_BYTES

    judged = pq.read_table(f"{folder}/tables.parquet")
    rd = RunDir(f"{folder}/run")
    for stage in ("generate", "judge"):
        rd.record(0, stage, outputs={}, seconds=0.0)
    base = process_rss()
    _, gen_peak, gen_seconds = _peak_while(lambda: _spool_responses(folder, rd))
    responses = ParquetRows(rd.path("round_0/responses.parquet"))
    _, peak, seconds = _peak_while(lambda: _dataset(0, responses, judged, rd))
    files = {name: rd.fs.get_file_info(rd.path(f"round_0/{name}.parquet")).size for name in ("train", "train_trl")}
    train = rd.path("round_0/train.parquet")
    fit_input = pq.read_table(train, columns=training_columns(pq.read_schema(train).names)).nbytes
    with open(f"{folder}/arrow_bytes.json") as f:
        arrow = json.load(f)
    return {"tables_arrow_bytes": arrow["responses"] + arrow["tables"], "arrow_bytes": arrow,
            "train_rows": rd.done(0, "dataset")["rows"], "parquet_bytes": files,
            "generation_growth_bytes": gen_peak - base, "generation_seconds": gen_seconds,
            "growth_bytes": peak - base, "seconds": seconds,
            "fit_input_bytes": fit_input, "driver_reads_fit_input": files["train"] <= DRIVER_READ_BYTES,
            "train_arrow_bytes": pq.read_table(train).nbytes}


def measure_dataset_stage(prompts: int = 20_000, k: int = 5, response_tokens: int = 450) -> dict[str, Any]:
    """The dataset stage's driver growth over the round's tables at this shape. The inputs are built and written in
    one fresh interpreter and the stage measured in another, so that nothing the build freed hides the stage's
    own growth; that one is set up as `sppo-ray run` sets up its driver (``sppo_ray.cli``: Arrow on the system
    allocator; ``runtime.bound_heap``)."""
    with tempfile.TemporaryDirectory(prefix="sppo-paper-round-") as folder:
        _python(f"from sppo_ray.bench.paper_round import _write_inputs; "
                f"_write_inputs({folder!r}, {int(prompts)}, {int(k)}, {int(response_tokens)})")
        out = _python(f"import json, sppo_ray.cli; from sppo_ray.runtime import bound_heap; bound_heap(); "
                      f"from sppo_ray.bench.paper_round import _measure_here; "
                      f"print(json.dumps(_measure_here({folder!r})))")
    return {"prompts": prompts, "k": k, "response_tokens": response_tokens,
            **json.loads(out.strip().splitlines()[-1])}


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the dataset-stage measurement failed:\n{done.stderr[-2000:]}")
    return done.stdout
