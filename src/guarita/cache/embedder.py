"""Sentence embedders for the semantic tier, and the embedding cache in front of them.

* :class:`WordLlamaEmbedder` (``embedder: wordllama``, the default): WordLlama's
  ``l2_supercat`` token embeddings, 256 dimensions, whose weights ship inside the
  ``wordllama`` wheel (no download at run time; the ``semantic`` extra). A static model:
  tens of microseconds per short text on one core, against milliseconds for a transformer
  such as all-MiniLM-L6-v2; ``docs/cache.md`` gives the comparison and why. Runs on a
  thread of its own, off the event loop.
* :class:`EndpointEmbedder` (``embedder: {base_url, model, api_key_env}``): any
  OpenAI-compatible ``/v1/embeddings`` endpoint.
* :class:`CachedEmbedder`: the same text is embedded once. Vectors are kept in a bounded
  LRU in the process and, in scale-out mode, as values of the shared state (Redis) so
  that every process reuses what any of them embedded.

Every vector is float32 and L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from guarita.errors import ConfigError
from guarita.providers.base import missing_extra
from guarita.state import Values

log = structlog.get_logger("guarita.cache")

Vectors = np.ndarray
"""A ``(n, dims)`` float32 array of L2-normalised rows."""


class Embedder(Protocol):
    name: str
    """Names the model: vectors of two names are never compared (nor cached together)."""
    dims: int

    async def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def aclose(self) -> None: ...


def normalised(vectors: Any) -> Vectors:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim == 1:
        out = out[None, :]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(out / norms, dtype=np.float32)


class WordLlamaEmbedder:
    """WordLlama ``l2_supercat`` at 256 dimensions, from the weights in its wheel."""

    def __init__(self, dims: int = 256) -> None:
        try:
            import wordllama
        except ImportError as exc:
            raise missing_extra("wordllama", "semantic") from exc
        # the wheel's own files; as cache_dir, since 0.4 looks for the tokenizer under a
        # directory name the wheel does not use
        self._model = wordllama.WordLlama.load(
            config="l2_supercat",
            dim=dims,
            disable_download=True,
            cache_dir=Path(wordllama.__file__).parent,
        )
        self.dims = dims
        self.name = f"wordllama-l2_supercat-{dims}"
        self._thread: ThreadPoolExecutor | None = None

    def embed_now(self, texts: Sequence[str]) -> Vectors:
        """On the calling thread (benchmarks and calibration)."""
        return normalised(self._model.embed(list(texts), norm=True))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="guarita-embed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.embed_now, list(texts))

    async def aclose(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None


class EndpointEmbedder:
    """An OpenAI-compatible ``POST {base_url}/embeddings``; the key from ``api_key_env``."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None,
        dims: int | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        import httpx

        headers = {}
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(
                    f"cache.semantic.embedder.api_key_env: the environment variable "
                    f"{api_key_env} is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )
        self._model = model
        self.name = f"endpoint:{base_url.rstrip('/')}/{model}"
        self.dims = dims or 0
        """Known after the first answer when not configured."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        response = await self._client.post(
            "/embeddings", json={"model": self._model, "input": list(texts)}
        )
        response.raise_for_status()
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        vectors = normalised([item["embedding"] for item in data])
        if len(vectors) != len(texts):
            raise ValueError(f"{len(vectors)} embeddings for {len(texts)} texts")
        self.dims = vectors.shape[1]
        return vectors

    async def aclose(self) -> None:
        await self._client.aclose()


class CachedEmbedder:
    """An embedder behind an LRU of vectors by text (and, with ``shared``, the shared state):
    a text already seen is not embedded again. ``hits`` and ``misses`` count texts."""

    PREFIX = "emb:"

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_entries: int = 50_000,
        shared: Values | None = None,
        shared_ttl_s: float = 7 * 86400,
    ) -> None:
        self.inner = embedder
        self.name = embedder.name
        self._max_entries = max_entries
        self._shared = shared
        self._shared_ttl_s = shared_ttl_s
        self._local: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._scope = hashlib.sha256(embedder.name.encode()).hexdigest()[:12]
        self.hits = 0
        self.misses = 0

    @property
    def dims(self) -> int:
        return self.inner.dims

    def __len__(self) -> int:
        return len(self._local)

    def _key(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def _shared_key(self, key: bytes) -> str:
        return f"{self.PREFIX}{self._scope}:{key.hex()}"

    async def embed(self, texts: Sequence[str]) -> Vectors:
        keys = [self._key(t) for t in texts]
        found: dict[int, np.ndarray] = {}
        for i, key in enumerate(keys):
            vector = self._local.get(key)
            if vector is not None:
                self._local.move_to_end(key)
                found[i] = vector
        if self._shared is not None and len(found) < len(texts):
            await self._from_shared(keys, found)
        missing = [i for i in range(len(texts)) if i not in found]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = await self.inner.embed([texts[i] for i in missing])
            for row, i in enumerate(missing):
                found[i] = fresh[row]
                self._remember(keys[i], fresh[row])
            if self._shared is not None:
                await self._to_shared([keys[i] for i in missing], fresh)
        return np.stack([found[i] for i in range(len(texts))]).astype(np.float32, copy=False)

    def _remember(self, key: bytes, vector: np.ndarray) -> None:
        self._local[key] = vector
        self._local.move_to_end(key)
        while len(self._local) > self._max_entries:
            self._local.popitem(last=False)

    async def _from_shared(self, keys: list[bytes], found: dict[int, np.ndarray]) -> None:
        assert self._shared is not None
        for i, key in enumerate(keys):
            if i in found:
                continue
            try:
                raw = await self._shared.get(self._shared_key(key))
            except Exception as exc:  # noqa: BLE001 - a shared cache away: embed instead
                log.warning("embedding_cache_get_failed", error_type=type(exc).__name__)
                return
            if raw is not None and len(raw) % 4 == 0 and raw:
                vector = np.frombuffer(raw, dtype=np.float32).copy()
                found[i] = vector
                self._remember(key, vector)

    async def _to_shared(self, keys: list[bytes], vectors: Vectors) -> None:
        assert self._shared is not None
        for key, vector in zip(keys, vectors, strict=True):
            try:
                await self._shared.set(
                    self._shared_key(key), vector.astype(np.float32).tobytes(), self._shared_ttl_s
                )
            except Exception as exc:  # noqa: BLE001 - not shared is still embedded
                log.warning("embedding_cache_put_failed", error_type=type(exc).__name__)
                return

    async def aclose(self) -> None:
        await self.inner.aclose()
