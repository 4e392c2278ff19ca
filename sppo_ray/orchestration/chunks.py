"""A long stage's rows written in chunks as they finish, so that an interrupted stage resumes with what is left.

A chunk is a Parquet file under ``round_t/chunks_<stage>/``, recorded in the manifest (``chunks``) after it is
written, with the stage's inputs. A later execution of the same stage with the same inputs reuses every recorded
chunk whose bytes still match; the stage's final file is then written as usual and the chunks are removed.

A spooled stage (generation) keeps no rows in memory at all: they are written in chunks whether or not chunks are
recorded for resuming (``every`` 0), and the final file is assembled from the chunks in prompt order, a row group
at a time (:meth:`StageChunks.assemble`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import OrderedDict
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from sppo_ray.orchestration.progress import Progress
from sppo_ray.orchestration.rundir import ROW_GROUP_ROWS, ParquetOut, RunDir

__all__ = ["SPOOL_ROWS", "StageChunks", "inputs_digest"]

# Rows per chunk of a spooled stage that records none (``chunk_prompts`` 0).
SPOOL_ROWS = 1000
# Blocks (chunk row groups) an assembly keeps read: a stage's blocks arrive nearly in order, so a row group of the
# final file takes a few blocks, each read once.
_HELD_BLOCKS = 8


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class StageChunks:
    """The chunks of one stage of one round. ``every`` rows per chunk (0: never record one); ``spool``: write
    every row to a chunk (``SPOOL_ROWS`` per chunk when ``every`` is 0) for :meth:`assemble`."""

    def __init__(self, rd: RunDir, t: int, stage: str, every: int, inputs: dict[str, Any], schema: pa.Schema,
                 spool: bool = False) -> None:
        self.rd, self.key, self.schema = rd, f"round_{t}/{stage}", schema
        self.every, self.recorded = (every or SPOOL_ROWS if spool else every), every > 0
        self.t, self.stage = t, stage
        self.folder, self.inputs = f"round_{t}/chunks_{stage}", inputs_digest(inputs)
        self.chunk: ParquetOut | None = None  # the open chunk
        self.written = len(self._recorded())
        self.files: list[str] = []  # the chunks :meth:`assemble` reads: reused ones, then this execution's

    def _recorded(self) -> list[dict[str, Any]]:
        entry = self.rd.manifest().get("chunks", {}).get(self.key)
        return entry["files"] if entry and entry["inputs"] == self.inputs else []

    def _intact(self) -> Iterator[tuple[str, pa.BufferReader]]:
        """(file, its bytes) of every recorded chunk whose bytes still match the manifest's digest, read once."""
        for chunk in self._recorded():
            if self.rd.exists(chunk["file"]):
                data = self.rd.read_bytes(chunk["file"])
                if hashlib.sha256(data).hexdigest() == chunk["sha256"]:
                    yield chunk["file"], pa.BufferReader(data)

    def load(self) -> pa.Table | None:
        """The rows of every recorded chunk (None if there are none); a chunk whose bytes changed is left out."""
        tables = [pq.read_table(data).cast(self.schema) for _, data in self._intact()]
        return pa.concat_tables(tables) if tables else None

    def done_ids(self, total: int) -> set[str]:
        """The prompts of every recorded chunk whose bytes still match, which :meth:`assemble` will take; a line
        on the screen says how many."""
        done: set[str] = set()
        for file, data in self._intact():
            self.files.append(file)
            done.update(pq.read_table(data, columns=["prompt_id"]).column(0).to_pylist())
        self._say(len(done), total)
        return done

    def resume(self, total: int) -> pa.Table | None:
        """:meth:`load`, and a line on the screen saying how much of the stage it holds."""
        finished = self.load()
        self._say(0 if finished is None else finished.num_rows, total)
        return finished

    def _say(self, reused: int, total: int) -> None:
        if reused:
            print(f"round {self.t} {self.stage}: {reused} of {total} prompts from the interrupted execution's "
                  "chunks", flush=True)

    def sink(self, progress: Progress | None) -> Callable[[pa.Table], None]:
        """What the stage calls with each block of new rows: into the chunks, and counted on the progress bar."""
        def on_rows(rows: pa.Table) -> None:
            self.add(rows)
            if progress is not None:
                progress.add(rows.num_rows)
        return on_rows

    def add(self, rows: pa.Table) -> None:
        """New rows, written at once into the open chunk (one row group per block: a block is one call's rows,
        consecutive prompts, and :meth:`assemble` reads them back a block at a time); the chunk is closed, and
        recorded, once ``every`` rows are in it. Nothing waits in memory for a chunk to fill."""
        if self.every <= 0:
            return
        if self.chunk is None:
            self.written += 1
            self.chunk = self.rd.open_parquet(f"{self.folder}/{self.written:05d}.parquet", self.schema)
        self.chunk.write(rows.cast(self.schema))
        if self.chunk.rows >= self.every:
            self._close()

    def _close(self) -> None:
        """Commit the open chunk and, for a stage that resumes from its chunks, record it in the manifest."""
        out, self.chunk = self.chunk, None
        out.commit()
        self.files.append(out.rel)
        if not self.recorded:
            return
        manifest = self.rd.manifest()
        entry = manifest.setdefault("chunks", {}).get(self.key)
        if not entry or entry["inputs"] != self.inputs:
            entry = manifest["chunks"][self.key] = {"inputs": self.inputs, "files": []}
        entry["files"].append({"file": out.rel, "sha256": out.digest, "rows": out.rows})
        self.rd.write_json("manifest.json", manifest)

    def assemble(self, rel: str, order: list[str]) -> tuple[str, int]:
        """Write the stage's final file ``rel`` from its chunks (after closing the open one), in ``order`` of
        ``prompt_id`` and ``ROW_GROUP_ROWS`` rows per row group as :meth:`RunDir.write_parquet` writes a table:
        the same bytes whatever order the rows arrived in. The chunks are read a row group (a block) at a time,
        the last ``_HELD_BLOCKS`` kept. A prompt in two chunks (a chunk that was unreadable at a resume, and
        readable again at the next) is taken from the first. Returns (sha256, rows)."""
        if self.chunk is not None:
            self._close()
        position = {pid: i for i, pid in enumerate(order)}
        files = [pq.ParquetFile(self.rd.path(chunk), filesystem=self.rd.fs, pre_buffer=False)  # see ParquetRows
                 for chunk in self.files]
        starts = [[0] for _ in files]  # each chunk's row groups' first rows
        for f, file in zip(starts, files):
            for g in range(file.num_row_groups):
                f.append(f[-1] + file.metadata.row_group(g).num_rows)
        placed, seen = [], set()
        for f, file in enumerate(files):
            for row, pid in enumerate(file.read(columns=["prompt_id"]).column(0).to_pylist()):
                if pid not in seen:
                    seen.add(pid)
                    placed.append((position[pid], f, row))
        placed.sort()
        held: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()

        def group(f: int, g: int) -> pa.Table:
            if (f, g) not in held:
                held[f, g] = files[f].read_row_group(g)
                if len(held) > _HELD_BLOCKS:
                    held.popitem(last=False)
            held.move_to_end((f, g))
            return held[f, g]

        def rows(f: int, start: int, n: int) -> list[pa.Table]:
            out = []
            while n:
                g = bisect.bisect_right(starts[f], start) - 1
                take = min(n, starts[f][g + 1] - start)
                out.append(group(f, g).slice(start - starts[f][g], take))
                start, n = start + take, n - take
            return out

        with self.rd.parquet_writer(rel, self.schema) as out:
            for first in range(0, len(placed), ROW_GROUP_ROWS):
                runs: list[list[int]] = []
                for (_, f, row) in placed[first:first + ROW_GROUP_ROWS]:  # runs of consecutive rows of one chunk
                    if runs and runs[-1][0] == f and runs[-1][1] + runs[-1][2] == row:
                        runs[-1][2] += 1
                    else:
                        runs.append([f, row, 1])
                parts = [t for r in runs for t in rows(*r)]
                out.write(pa.concat_tables(parts).cast(self.schema).combine_chunks())
        return out.digest, out.rows

    def clear(self) -> None:
        """After the stage is recorded: its chunks are in the final file. A chunk still open (a judged stage's last
        rows, fewer than ``every``) is closed and deleted unrecorded, not left to be closed whenever its writer is
        collected (on an object store that would upload it after its folder was removed)."""
        if self.chunk is not None:
            self.chunk.abort()
            self.chunk = None
        manifest = self.rd.manifest()
        if manifest.get("chunks", {}).pop(self.key, None) is not None:
            self.rd.write_json("manifest.json", manifest)
        if self.rd.exists(self.folder):
            self.rd.fs.delete_dir(self.rd.path(self.folder))
