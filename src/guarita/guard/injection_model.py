"""The second layer: logistic regression over hashed word and character n-grams, numpy only.

Training (``bench/train_injection.py``) and scoring share :class:`HashingFeaturizer`, so the
feature a weight was learnt for is the feature it is applied to. Hashing is our own
(CRC-32 for words, a vectorised polynomial hash for character n-grams, mixed by a 64-bit
multiply): Python's ``hash`` is salted per process and would change every feature.

The weights live in a compressed ``.npz`` read with ``allow_pickle=False``: arrays of
numbers and one JSON string of metadata, nothing that can run code when loaded.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FORMAT_VERSION", "HashingFeaturizer", "LinearModel", "load_model", "save_model"]

FORMAT_VERSION = 1
_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_CHAR_BASE = np.uint64(0x100000001B3)
# One salt per feature family, so a word and a character n-gram never share a hash.
_SALT_WORD = np.uint64(0x51 << 56)
_SALT_BIGRAM = np.uint64(0x52 << 56)
_SALT_CHAR = np.uint64(0x43 << 56)
_SALT_TRIGRAM = np.uint64(0x54 << 56)
_SALT_CUE = np.uint64(0x45 << 56)

# Cues: co-occurrences a bag of n-grams cannot express, each one extra feature when
# all of its parts occur in the text (a window). They describe the shapes attacks take
# in general, an instruction addressed to the AI, a persona defined by having no limits,
# a fictional or hypothetical frame around a dangerous subject, data sent somewhere.
_AI_WORDS = (
    r"\b(?:ai|assistant|chatbot|bot|llm|model|agent|language model|summari[sz]er|gpt"
    r"|chatgpt|copilot|claude|gemini)s?\b"
)
_CUE_PARTS: dict[str, tuple[str, ...]] = {
    # "the assistant should ...", "AI: ...", "to any model reading this"
    "addressed_ai": (
        _AI_WORDS + r"[^.\n]{0,40}?\b(?:must|should|shall|needs? to|is to|has to|will now"
        r"|reading|processing|handling)\b|\b(?:to|for) (?:the |any |all )?" + _AI_WORDS,
    ),
    # a document or tool result talking to its reader's AI
    "addressed_ai_in_document": (
        _AI_WORDS + r"[^.\n]{0,40}?\b(?:must|should|shall|needs? to|is to|has to|reading"
        r"|processing|handling)\b|\b(?:to|for) (?:the |any |all )?" + _AI_WORDS,
        r"\b(?:email|e-mail|page|document|review|invoice|ticket|readme|article|summar"
        r"|tool|result|report|memo|file|inbox|message|website|site)",
    ),
    # a persona or character described by what it will not hold back
    "persona_without_limits": (
        r"\b(?:you are|you're|you will (?:be|play|act)|act as|pretend|play(?:ing)? (?:as|the)"
        r"|character|persona|role-?play|stay as|speak as|respond as|answer as|reply as)\b",
        r"\b(?:no|never|without|any|free of|beyond|outside|unbound|unrestricted|unfiltered"
        r"|uncensored|amoral|forbidden|unshackled)\b[^.\n]{0,30}?\b(?:rules?|limits?"
        r"|restrictions?|boundaries|filters?|ethics|morals?|polic(?:y|ies)|guidelines?"
        r"|refus\w*|warnings?|disclaimers?|consequences|censor\w*|hesitation)",
    ),
    # fiction or hypothesis wrapped around a dangerous subject
    "framed_harm": (
        r"\b(?:novel|story|fiction\w*|screenplay|hypothetic\w*|imagine|pretend|game"
        r"|role-?play|character|thought experiment|parallel universe|simulat\w*)\b",
        r"\b(?:bombs?|explosives?|meth\w*|weapons?|poisons?|malware|ransomware|keylogger"
        r"|hack\w*|phishing|nerve agents?|ricin|napalm|thermite|fentanyl|counterfeit"
        r"|launder\w*|steal\w*|exploit)\b",
        r"\b(?:steps?|exact\w*|precise\w*|detail\w*|recipe|procedure|instructions"
        r"|quantit\w*|code|how to|accurate)\b",
    ),
    # data sent or linked out: a verb of sending and a destination
    "send_out": (
        r"\b(?:send|forward|email|post|upload|include|append|add|embed|render|share)\b",
        r"https?://|[\w.+-]+@[\w-]+\.\w+|!\[",
        r"\b(?:passwords?|keys?|tokens?|credentials|conversation|history|contacts|secrets?"
        r"|data|address|emails|codes?|cookies|files)\b",
    ),
    # answers shaped to dodge refusals
    "refusal_suppression": (
        r"\b(?:do not|don't|never|without|no)\b[^.\n]{0,20}?\b(?:apologi[sz]e|refuse|refusal"
        r"|warnings?|disclaimers?|caveats|moralis\w*|moraliz\w*|mention (?:safety|ethics|legal))",
        r"\b(?:how to|how do i|steps?|explain|tell me|give me|write|provide)\b",
    ),
}
_CUES = tuple(
    (name, tuple(re.compile(part) for part in parts)) for name, parts in sorted(_CUE_PARTS.items())
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class HashingFeaturizer:
    """Folded text to a sparse, L2-normalised vector of ``2**bits`` hashed n-gram counts.

    Words (unigrams and bigrams) and character n-grams (``char_min``..``char_max``, over
    the text with spaces kept) each contribute ``1 + log(count)`` to their bucket.
    """

    bits: int = 18
    char_min: int = 3
    char_max: int = 5
    word_bigrams: bool = True
    word_trigrams: bool = False
    cues: bool = False

    def _bucket(self, hashes: npt.NDArray[np.uint64], salt: np.uint64) -> IntArray:
        mixed = (hashes ^ salt) * _MIX
        return (mixed >> np.uint64(64 - self.bits)).astype(np.int64)

    def _word_buckets(self, text: str) -> list[IntArray]:
        words = _WORD.findall(text)
        if not words:
            return []
        hashes = np.fromiter(
            (zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words)
        )
        parts = [self._bucket(hashes, _SALT_WORD)]
        if self.word_bigrams and len(words) > 1:
            pairs = hashes[:-1] * _CHAR_BASE + hashes[1:]
            parts.append(self._bucket(pairs, _SALT_BIGRAM))
        if self.word_trigrams and len(words) > 2:
            triples = (hashes[:-2] * _CHAR_BASE + hashes[1:-1]) * _CHAR_BASE + hashes[2:]
            parts.append(self._bucket(triples, _SALT_TRIGRAM))
        return parts

    def _cue_buckets(self, text: str) -> list[IntArray]:
        if not self.cues:
            return []
        found = [
            zlib.crc32(name.encode("ascii"))
            for name, parts in _CUES
            if all(part.search(text) for part in parts)
        ]
        if not found:
            return []
        hashes = np.array(found, dtype=np.uint64)
        # Counted thrice, so one cue weighs about as much as a handful of n-grams.
        return [self._bucket(hashes, _SALT_CUE)] * 3

    def _char_buckets(self, text: str) -> list[IntArray]:
        padded = f" {text} "
        codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        parts: list[IntArray] = []
        for n in range(self.char_min, self.char_max + 1):
            count = len(codes) - n + 1
            if count <= 0:
                break
            hashes = np.full(count, n, dtype=np.uint64)
            for k in range(n):
                hashes = hashes * _CHAR_BASE + codes[k : k + count]
            parts.append(self._bucket(hashes, _SALT_CHAR))
        return parts

    def features(self, text: str) -> tuple[IntArray, FloatArray]:
        """Sorted bucket indices and their values; empty arrays for empty text."""
        parts = self._word_buckets(text) + self._char_buckets(text) + self._cue_buckets(text)
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        buckets, counts = np.unique(np.concatenate(parts), return_counts=True)
        values = (1.0 + np.log(counts)).astype(np.float32)
        norm = float(np.sqrt(np.dot(values, values)))
        return buckets, values / np.float32(norm)

    def to_meta(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "char_min": self.char_min,
            "char_max": self.char_max,
            "word_bigrams": self.word_bigrams,
            "word_trigrams": self.word_trigrams,
            "cues": self.cues,
        }


@dataclass(frozen=True, slots=True)
class LinearModel:
    """Weights, bias and the featurizer they were trained with; ``meta`` is informational."""

    featurizer: HashingFeaturizer
    weights: FloatArray
    bias: float
    meta: dict[str, Any]

    def probability(self, text: str) -> float:
        """The calibrated chance (logistic) that ``text`` is an injection or jailbreak."""
        buckets, values = self.featurizer.features(text)
        logit = float(np.dot(self.weights[buckets], values)) + self.bias
        if logit < -30.0:
            return 0.0
        return 1.0 / (1.0 + math.exp(-logit))


def save_model(path: Path, model: LinearModel) -> None:
    """Write ``model`` as a compressed ``.npz`` of plain arrays (no pickle)."""
    meta = dict(model.meta, format_version=FORMAT_VERSION, featurizer=model.featurizer.to_meta())
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            weights=model.weights.astype(np.float16),
            bias=np.array([model.bias], dtype=np.float64),
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
        )


def load_model(path: Path) -> LinearModel:
    """Read a model written by :func:`save_model`; refuses other formats and object arrays."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes().decode("utf-8"))
        weights = data["weights"].astype(np.float32)
        bias = float(data["bias"][0])
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported injection model format {meta.get('format_version')}")
    featurizer = HashingFeaturizer(**meta["featurizer"])
    if weights.shape != (1 << featurizer.bits,):
        raise ValueError(f"{path}: {weights.shape[0]} weights for {featurizer.bits} hash bits")
    return LinearModel(featurizer=featurizer, weights=weights, bias=bias, meta=meta)
