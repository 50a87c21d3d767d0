"""The semantic tier's vector index, in the process.

Entries are grouped: a group is one namespace and one *context* (the request without its
last user message: the model or agent, system prompt, earlier turns, tools, sampling
parameters), so a search only ever sees questions asked in the same namespace and the same
context, and no filter runs per candidate. A group holds its vectors in a numpy matrix
(an exact search: one matrix-vector product) until it reaches ``HNSW_FROM`` entries, then
moves to a USearch HNSW graph (approximate, about 0.1 ms at 100,000 entries).

The whole index is bounded (``max_entries``): the least recently used entry goes first.
An entry names the exact tier's storage key of its answer, so the answer itself is stored
once; an entry whose answer is gone is dropped when found.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from guarita.providers.base import missing_extra

HNSW_FROM = 4096
"""A group with this many entries moves from the exact matrix to an HNSW graph."""


@dataclass(frozen=True, slots=True)
class SemanticEntry:
    text: str
    """The question (the last user message) that was answered."""
    key: str
    """The exact tier's storage key of the answer."""
    fresh_until: float
    keep_until: float
    """Epoch seconds: fresh for hits until the first, for the fallback level until the second."""


@dataclass(frozen=True, slots=True)
class Candidate:
    score: float
    """The cosine of the two questions."""
    entry: SemanticEntry
    label: int


class _Matrix:
    """An exact group: rows in a growing matrix, removal by swapping in the last row."""

    def __init__(self, dims: int) -> None:
        self.vectors = np.empty((16, dims), dtype=np.float32)
        self.labels: list[int] = []
        self.row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, label: int, vector: np.ndarray) -> None:
        n = len(self.labels)
        if n == len(self.vectors):
            grown = np.empty((2 * n, self.vectors.shape[1]), dtype=np.float32)
            grown[:n] = self.vectors
            self.vectors = grown
        self.vectors[n] = vector
        self.labels.append(label)
        self.row_of[label] = n

    def remove(self, label: int) -> None:
        row = self.row_of.pop(label)
        last = len(self.labels) - 1
        if row != last:
            moved = self.labels[last]
            self.vectors[row] = self.vectors[last]
            self.labels[row] = moved
            self.row_of[moved] = row
        self.labels.pop()

    def search(self, vector: np.ndarray, count: int) -> list[tuple[int, float]]:
        n = len(self.labels)
        if n == 0:
            return []
        scores = self.vectors[:n] @ vector
        if n <= count:
            order = np.argsort(-scores)
        else:
            top = np.argpartition(-scores, count)[:count]
            order = top[np.argsort(-scores[top])]
        return [(self.labels[i], float(scores[i])) for i in order]


class _Graph:
    """An approximate group: a USearch HNSW graph on 8-bit quantised vectors (a quarter of
    the memory traffic of float32), its candidates scored again on float16 copies, so the
    threshold compares a cosine within about 1e-3 of the exact one."""

    def __init__(self, dims: int, matrix: _Matrix) -> None:
        try:
            from usearch.index import Index
        except ImportError as exc:
            raise missing_extra("usearch", "semantic") from exc
        self._index: Any = Index(ndim=dims, metric="cos", dtype="i8", connectivity=16,
                                 expansion_add=64, expansion_search=64)  # fmt: skip
        self._exact: dict[int, np.ndarray] = {}
        n = len(matrix)
        if n:
            self._index.add(np.asarray(matrix.labels, dtype=np.uint64), matrix.vectors[:n])
            for row, label in enumerate(matrix.labels):
                self._exact[label] = matrix.vectors[row].astype(np.float16)

    def __len__(self) -> int:
        return len(self._exact)

    def add(self, label: int, vector: np.ndarray) -> None:
        self._index.add(label, vector, threads=1)
        self._exact[label] = vector.astype(np.float16)

    def remove(self, label: int) -> None:
        self._index.remove(label)
        del self._exact[label]

    def search(self, vector: np.ndarray, count: int) -> list[tuple[int, float]]:
        if not self._exact:
            return []
        found = self._index.search(vector, count, threads=1)
        out = []
        for key in found.keys:
            exact = self._exact.get(int(key))
            if exact is not None:
                out.append((int(key), float(exact.astype(np.float32) @ vector)))
        out.sort(key=lambda item: -item[1])
        return out


class VectorIndex:
    """Every group of this process, bounded by ``max_entries`` (least recently used first)."""

    def __init__(self, dims: int, max_entries: int = 100_000) -> None:
        self.dims = dims
        """0: set by the first vector added."""
        self.max_entries = max_entries
        self._groups: dict[str, _Matrix | _Graph] = {}
        self._entries: OrderedDict[int, tuple[str, SemanticEntry]] = OrderedDict()
        self._by_key: dict[tuple[str, str], int] = {}
        self._labels = itertools.count(1)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, group: str, vector: np.ndarray, entry: SemanticEntry) -> None:
        """Index ``entry`` (replacing one of the same group and key)."""
        if self.dims == 0:  # an endpoint's embeddings: known from the first
            self.dims = int(vector.shape[0])
        if vector.shape != (self.dims,):
            raise ValueError(f"a vector of {vector.shape} for an index of {self.dims} dims")
        old = self._by_key.get((group, entry.key))
        if old is not None:
            self.remove(old)
        label = next(self._labels)
        store = self._groups.get(group)
        if store is None:
            store = self._groups[group] = _Matrix(self.dims)
        elif isinstance(store, _Matrix) and len(store) + 1 >= HNSW_FROM:
            store = self._groups[group] = _Graph(self.dims, store)
        store.add(label, vector)
        self._entries[label] = (group, entry)
        self._by_key[(group, entry.key)] = label
        while len(self._entries) > self.max_entries:
            self.remove(next(iter(self._entries)))
            self.evicted += 1

    def search(self, group: str, vector: np.ndarray, count: int = 4) -> list[Candidate]:
        """The ``count`` nearest entries of ``group``, most similar first."""
        store = self._groups.get(group)
        if store is None:
            return []
        out = []
        for label, score in store.search(vector, count):
            item = self._entries.get(label)
            if item is not None:
                out.append(Candidate(score, item[1], label))
        return out

    def touch(self, label: int) -> None:
        """Mark an entry as just used (it goes last in the eviction order)."""
        if label in self._entries:
            self._entries.move_to_end(label)

    def remove(self, label: int) -> None:
        item = self._entries.pop(label, None)
        if item is None:
            return
        group, entry = item
        self._by_key.pop((group, entry.key), None)
        store = self._groups[group]
        store.remove(label)
        if len(store) == 0:
            del self._groups[group]

    def remove_prefix(self, prefix: str | None) -> int:
        """Drop the groups whose name starts with ``prefix`` (all with None)."""
        labels = [
            label
            for label, (group, _) in self._entries.items()
            if prefix is None or group.startswith(prefix)
        ]
        for label in labels:
            self.remove(label)
        return len(labels)
