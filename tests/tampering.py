"""Tampering with a staged file: the way only a checksum can see (one byte of a Parquet data page changed in
place, the file's size and footer intact), or its rows rewritten. Shared by the tests of promotion, canary
completion and health, rollback, drills and the online sync."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def rewrite_rows(path: Path, change: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """Rewrite the Parquet file with `change` of its rows, and drop the checksum the local Hadoop file system
    keeps beside it (S3 has none), so Spark reads the new bytes as they are. Returns the rows it had."""
    rows = pq.read_table(path)
    pq.write_table(change(rows), path)
    path.with_name(f".{path.name}.crc").unlink(missing_ok=True)
    return rows


def change_one_byte(path: Path) -> int:
    """Flip the bits of the last byte of the file's largest column chunk (inside its last data page, past
    the page header; the footer is untouched, so a reader fails, if at all, in the pages). Returns the
    offset changed."""
    metadata = pq.ParquetFile(path).metadata
    chunks = [
        metadata.row_group(group).column(column)
        for group in range(metadata.num_row_groups)
        for column in range(metadata.num_columns)
    ]
    chunk = max(chunks, key=lambda chunk: chunk.total_compressed_size)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    offset = start + chunk.total_compressed_size - 1
    assert offset > chunk.data_page_offset, "the data page has no byte past its header"
    before = path.read_bytes()
    after = bytearray(before)
    after[offset] ^= 0xFF
    path.write_bytes(bytes(after))
    assert len(after) == len(before) and sum(a != b for a, b in zip(after, before, strict=True)) == 1
    return offset
