"""A stage's input rows, read a slice at a time: from a table the caller holds, or from a Parquet file it does not.

A round's responses are its largest data (at the paper's round, ~800 MB as Arrow). The driver writes them to
``responses.parquet`` as they arrive and the later stages read that file a slice at a time, so the driver's memory
does not grow with the round (BENCHMARKS.md "Scale"). Roles and orchestration both use this module.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["ParquetRows", "TableRows", "aligned_slices"]


class TableRows:
    """Rows the caller holds as one table."""

    def __init__(self, table: pa.Table) -> None:
        self.table, self.num_rows = table, table.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def slices(self, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        table = self.table.select(columns) if columns else self.table
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows)


class ParquetRows:
    """Rows of one Parquet file (``path`` on ``filesystem``), read when asked for and never all at once."""

    def __init__(self, path: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.path, self.fs = path, filesystem or pafs.LocalFileSystem()
        self.num_rows = self._file().metadata.num_rows

    def _file(self) -> pq.ParquetFile:
        """The file, read without pyarrow's pre-buffering (``ParquetFile``'s default): with it, the driver's RSS
        crept up while a stage read its files a row group at a time and fell back only when they were closed (the
        responses' assembly at the paper's shape: +70 MB with it, +49 without, BENCHMARKS.md "Scale")."""
        return pq.ParquetFile(self.path, filesystem=self.fs, pre_buffer=False)

    def column(self, name: str) -> pa.ChunkedArray:
        return self._file().read(columns=[name]).column(name)

    def slices(self, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """``rows`` rows at a time (the last slice may be shorter), in the file's order, read a row group at a
        time. (``ParquetFile.iter_batches`` held on to what it had read: iterating the paper round's 380 MB of
        responses in it grew the process by as much, one row group at a time by 7 MB, BENCHMARKS.md "Scale".)"""
        file, pending = self._file(), None
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=columns)
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= rows:
                yield pending.slice(0, rows)
                pending = pending.slice(rows)
        if pending is not None and pending.num_rows:
            yield pending


def aligned_slices(rows: TableRows | ParquetRows, keys: Iterable[pa.Table], key: str, read_rows: int,
                   columns: list[str] | None = None) -> Iterator[pa.Table]:
    """For each table of ``keys`` (together, a subsequence of ``rows``'s ``key`` values in the same order), the run of ``rows`` that ends with the slice's last key and starts after the previous slice's: the rows the
    slice needs, read ``read_rows`` at a time and never more than a slice and a read ahead."""
    source = rows.slices(read_rows, columns)
    held = None
    for part in keys:
        last = part.column(key)[-1].as_py()
        while True:
            ids = [] if held is None else held.column(key).to_pylist()
            if last in ids:
                break
            more = next(source, None)
            if more is None:
                raise KeyError(f"{key} {last!r} is not among the rows")
            held = more if held is None else pa.concat_tables([held, more])
        cut = ids.index(last) + 1
        yield held.slice(0, cut)
        held = held.slice(cut)
