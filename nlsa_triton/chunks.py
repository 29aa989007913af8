"""Chunk layout: how the L sorted positions of a round are cut into chunks (docs/semantics.md §4.1).

Every backend (the reference, the torch backend, the Triton launchers) and the attention
maps cut the sorted order the same way, from this one function.
"""
from __future__ import annotations

from typing import NamedTuple


class ChunkLayout(NamedTuple):
    """How L sorted positions are cut into chunks (docs/semantics.md §4.1).

    chunk: effective chunk size (L itself when L <= chunk_size: one chunk, no padding).
    padding: P, the number of copies of the last sorted positions appended.
    n_chunks: (L + P) // chunk.
    """

    chunk: int
    padding: int
    n_chunks: int


def chunk_layout(length: int, chunk_size: int) -> ChunkLayout:
    chunk = min(chunk_size, length)
    padding = (chunk - length % chunk) % chunk
    return ChunkLayout(chunk, padding, (length + padding) // chunk)
