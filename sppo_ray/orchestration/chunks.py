"""A long stage's rows written in chunks as they finish, so that an interrupted stage resumes with what is left.

A chunk is a Parquet file under ``round_t/chunks_<stage>/``, recorded in the manifest (``chunks``) after it is
written, with the stage's inputs. A later execution of the same stage with the same inputs reuses every recorded
chunk whose bytes still match; the stage's final file is then written as usual and the chunks are removed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from sppo_ray.orchestration.progress import Progress
from sppo_ray.orchestration.rundir import RunDir

__all__ = ["StageChunks", "inputs_digest"]


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class StageChunks:
    """The chunks of one stage of one round. ``every`` rows per chunk (0: never write one)."""

    def __init__(self, rd: RunDir, t: int, stage: str, every: int, inputs: dict[str, Any], schema: pa.Schema) -> None:
        self.rd, self.key, self.every, self.schema = rd, f"round_{t}/{stage}", every, schema
        self.t, self.stage = t, stage
        self.folder, self.inputs = f"round_{t}/chunks_{stage}", inputs_digest(inputs)
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.written = len(self._recorded())

    def _recorded(self) -> list[dict[str, Any]]:
        entry = self.rd.manifest().get("chunks", {}).get(self.key)
        return entry["files"] if entry and entry["inputs"] == self.inputs else []

    def load(self) -> pa.Table | None:
        """The rows of every recorded chunk (None if there are none); a chunk whose bytes changed is left out."""
        tables = []
        for chunk in self._recorded():
            if not self.rd.exists(chunk["file"]):
                continue
            data = self.rd.read_bytes(chunk["file"])
            if hashlib.sha256(data).hexdigest() == chunk["sha256"]:
                tables.append(pq.read_table(pa.BufferReader(data)).cast(self.schema))
        return pa.concat_tables(tables) if tables else None

    def resume(self, total: int) -> pa.Table | None:
        """:meth:`load`, and a line on the screen saying how much of the stage it holds."""
        finished = self.load()
        if finished is not None:
            print(f"round {self.t} {self.stage}: {finished.num_rows} of {total} prompts from the interrupted "
                  "execution's chunks", flush=True)
        return finished

    def sink(self, progress: Progress | None) -> Callable[[pa.Table], None]:
        """What the stage calls with each block of new rows: into the chunks, and counted on the progress bar."""
        def on_rows(rows: pa.Table) -> None:
            self.add(rows)
            if progress is not None:
                progress.add(rows.num_rows)
        return on_rows

    def add(self, rows: pa.Table) -> None:
        """New rows; a chunk is written once ``every`` of them are waiting."""
        if self.every <= 0:
            return
        self.buffer.append(rows)
        self.buffered += rows.num_rows
        if self.buffered >= self.every:
            self._write()

    def _write(self) -> None:
        table = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        self.written += 1
        rel = f"{self.folder}/{self.written:05d}.parquet"
        digest = self.rd.write_parquet(rel, table)
        manifest = self.rd.manifest()
        entry = manifest.setdefault("chunks", {}).get(self.key)
        if not entry or entry["inputs"] != self.inputs:
            entry = manifest["chunks"][self.key] = {"inputs": self.inputs, "files": []}
        entry["files"].append({"file": rel, "sha256": digest, "rows": table.num_rows})
        self.rd.write_json("manifest.json", manifest)

    def clear(self) -> None:
        """After the stage is recorded: its chunks are in the final file."""
        manifest = self.rd.manifest()
        if manifest.get("chunks", {}).pop(self.key, None) is not None:
            self.rd.write_json("manifest.json", manifest)
        if self.rd.exists(self.folder):
            self.rd.fs.delete_dir(self.rd.path(self.folder))
