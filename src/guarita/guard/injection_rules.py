"""The first layer: named regular expressions over folded text, each with a weight.

A rule says how much one pattern alone suggests an attack (``weight`` in 0-1); several
hits add up as independent evidence (``1 - prod(1 - w)``). Strong rules describe an
*instruction to the model* ("ignore all previous instructions", "you are now DAN",
"reveal your system prompt"), not a mere mention of a trigger word, so "ignore whitespace
in git diff" or "what is a system prompt?" match nothing. A strong rule whose match sits
inside quotes in a message that talks *about* attacks ("why is 'ignore previous
instructions' dangerous?") counts for a fraction of its weight.

Patterns read the folded text of :mod:`guarita.guard.injection_normalise` (lower case,
no diacritics, look-alikes folded) and are compiled once per :class:`RuleSet`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_RULES", "SIGNAL_WEIGHTS", "Rule", "RuleHit", "RuleSet", "combine"]

_OVERRIDE_VERBS = (
    r"(?:ignore|ignoring|disregard|disregarding|forget|skip|overlook|bypass|override|neglect"
    r"|abandon|discard|dismiss|set aside|throw out|stop following|do not follow|don't follow)"
)
_EARLIER = (
    r"(?:previous|prior|preceding|above|earlier|former|foregoing|original|initial|existing"
    r"|old|system|safety|default|given|programmed|current)"
)
_DIRECTIVES = (
    r"(?:instructions?|prompts?|rules|directions?|directives?|guidelines?|commands?|context"
    r"|constraints?|programming|training|polic(?:y|ies)|restrictions?|orders|guidance)"
)
_LIMITS = (
    r"(?:restrictions?|limitations?|limits|filters?|filtering|censorship|censoring"
    r"|guidelines?|rules|boundaries|constraints|morals?|morality|ethics|polic(?:y|ies)"
    r"|safeguards?|guardrails?)"
)
_MODES = r"(?:developer|dev|god|jailbreak|jailbroken|unrestricted|dan|evil|opposite|chaos|stan)"
_AI = r"(?:ai|assistant|bot|llm|model|agent|language model|chatbot|gpt|chatgpt|claude|copilot)"
_REVEAL = (
    r"(?:reveal|show|print|output|display|repeat|tell me|give me|share|dump|leak|expose"
    r"|write out|spell check|translate|summari[sz]e|list|recite|disclose|paste|return"
    r"|what (?:is|are|was|were))"
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One named pattern; ``strong`` rules are dampened when quoted in a discussion.

    ``hints`` are substrings one of which any match must contain: a plain ``in`` test on
    them skips the regular expression on most text, which is what keeps a 60 KB tool
    output cheap. An empty tuple always runs the pattern.
    """

    id: str
    pattern: str
    weight: float
    strong: bool = False
    hints: tuple[str, ...] = ()


DEFAULT_RULES: tuple[Rule, ...] = (
    # Instruction override.
    Rule(
        "ignore_previous",
        rf"\b{_OVERRIDE_VERBS}\b[^.\n]{{0,40}}?\b{_EARLIER}\b[^.\n]{{0,24}}?\b{_DIRECTIVES}\b",
        0.9,
        strong=True,
        hints=(
            "ignor",
            "disregard",
            "forget",
            "skip",
            "overlook",
            "bypass",
            "overrid",
            "neglect",
            "abandon",
            "discard",
            "dismiss",
            "aside",
            "throw",
            "follow",
        ),
    ),
    Rule(
        "ignore_everything",
        r"\b(?:ignore|disregard|forget)\b (?:everything|all(?: of it)?|anything)"
        r"(?: (?:that|which))?"
        r" (?:above|before this|prior|previously|(?:you were|you've been|you have been|"
        r"i) (?:told|said|given|instructed)|(?:up to|until) (?:now|this point))",
        0.75,
        strong=True,
        hints=("ignore", "disregard", "forget"),
    ),
    Rule(
        "ignore_multilingual",
        r"\b(?:ignorier\w*|vergiss\w*|ignore[rz]?|oublie[rz]?|ignora\w*|olvid\w*|dimentic\w*"
        r"|esquec\w*|descart\w*|negeer\w*|vergeet\w*)\b[^.\n]{0,40}?\b(?:vorherig\w*|bisherig\w*"
        r"|alle|precedent\w*|anterior\w*|previ(?!ous)\w*|tutte|todas|toutes|vorige|eerdere)\b"
        r"[^.\n]{0,24}?\b(?:anweisungen|instruktionen|regeln|instructions|consignes|regles"
        r"|instrucciones|reglas|istruzioni|regole|instrucoes|regras|instructies)\b",
        0.85,
        strong=True,
        hints=(
            "ignor",
            "vergiss",
            "oubli",
            "olvid",
            "dimentic",
            "esquec",
            "descart",
            "negeer",
            "vergeet",
        ),
    ),
    Rule(
        "new_instructions",
        r"\b(?:new|updated|real|actual|true|revised|override|overriding|secret|hidden)"
        r" (?:system )?(?:instructions?|directives?|orders|task|rules|prompt) ?:",
        0.45,
        hints=("instruction", "directive", "orders", "task", "rules", "prompt"),
    ),
    # Persona and jailbreak framings.
    Rule(
        "do_anything_now",
        r"\bdo anything now\b|\bdan mode\b",
        0.85,
        hints=("anything now", "dan mode"),
    ),
    Rule(
        "become_persona",
        r"\b(?:you are|you're|you will be|act as|become|pretend to be|play|roleplay as"
        r"|role-play as|simulate|be) (?:now )?(?:an? |the )?(?:dan|stan|dude|aim|mongo tom"
        r"|evil confidant|bettergpt|antigpt|jailbreak|jailbroken \w+)\b",
        0.85,
        hints=("dan", "stan", "dude", "aim", "mongo", "evil", "bettergpt", "antigpt", "jailbr"),
    ),
    Rule(
        "mode_enabled",
        rf"\b{_MODES} mode\b[^.\n]{{0,60}}?\b(?:enabled|activated|engaged|unlocked)\b"
        rf"|\byou\b[^.\n]{{0,30}}?\b(?:are|will|now|in|act|simulate|enter|switch)\b[^.\n]{{0,30}}?"
        rf"\b(?:{_MODES}|maintenance|admin|debug|sudo|root) mode\b",
        0.8,
        hints=(" mode",),
    ),
    Rule(
        "unrestricted_ai",
        r"\b(?:unrestricted|unfiltered|uncensored|unlimited|unbound|jailbroken|unchained"
        r"|amoral|unethical|rogue|evil) (?:ai|assistant|model|chatbot|bot|version|mode"
        r"|persona|character|llm|entity|alter ego|twin)\b",
        0.6,
        hints=(
            "unrestricted",
            "unfiltered",
            "uncensored",
            "unlimited",
            "unbound",
            "jailbroken",
            "unchained",
            "amoral",
            "unethical",
            "rogue",
            "evil",
        ),
    ),
    Rule(
        "no_restrictions",
        rf"\b(?:without|free (?:of|from)|not bound by|unbound by|no longer bound by|not (?:have"
        rf"|follow) any|none of the|no|zero|ignore (?:all|any|your))(?: any)?(?: (?:ethical|moral"
        rf"|content|safety|openai|ai|usual|normal))? {_LIMITS}\b",
        0.45,
        hints=(
            "restrict",
            "limit",
            "filter",
            "censor",
            "guideline",
            "rules",
            "boundar",
            "constraint",
            "moral",
            "ethic",
            "polic",
            "safeguard",
            "guardrail",
        ),
    ),
    Rule(
        "roleplay_unrestricted",
        r"\b(?:pretend|act|role-?play|imagine|behave|respond|answer|simulate)\b[^.\n]{0,40}?"
        r"\b(?:as if|like|as)\b[^.\n]{0,40}?\b(?:no (?:rules|limits|restrictions|filters|ethics"
        r"|morals)|without (?:rules|limits|restrictions|filters|ethics|morals)|unrestricted"
        r"|unfiltered|uncensored|evil|amoral|unethical|jailbroken)\b",
        0.7,
        hints=(
            "no ",
            "without",
            "unrestricted",
            "unfiltered",
            "uncensored",
            "evil",
            "amoral",
            "unethical",
            "jailbroken",
        ),
    ),
    Rule(
        "persona_switch",
        r"\byou are (?:now|no longer)\b|\byou(?:'re| are) going to (?:act|pretend|be|play)\b"
        r"|\bfrom now on,? you (?:are|will|must|shall|can)\b|\byour new (?:name|role|persona) is\b",
        0.4,
        hints=("you are", "you're", "from now on", "your new"),
    ),
    Rule(
        "stay_in_character",
        r"\b(?:stay|remain|keep) in character\b|\bbreak(?:ing)? character\b",
        0.4,
        hints=("character",),
    ),
    Rule(
        "never_refuse",
        r"\b(?:never|not|don't|do not|won't|will not|cannot|can't|must not|mustn't)"
        r" (?:ever )?(?:refuse|decline|reject|say no|deny)\b"
        r"|\b(?:must|will|shall|have to|always) (?:always )?(?:comply|answer|obey|respond)\b"
        r"[^.\n]{0,30}?\b(?:any|every|all|regardless|no matter|whatever)\b",
        0.6,
        hints=(
            "refus",
            "declin",
            "reject",
            "say no",
            "deny",
            "comply",
            "answer",
            "obey",
            "respond",
        ),
    ),
    Rule(
        "refusal_suppression",
        r"\b(?:do not|don't|never|without|no|stop) (?:include |add |give |mention |use |provide"
        r" |adding |giving |including )?(?:any )?(?:warnings?|disclaimers?|apolog\w+|moral\w*"
        r" (?:lectures?|lessons?|policing)|ethical (?:concerns?|considerations?|guidelines?)"
        r"|caveats?|reminders?|censorship)\b",
        0.5,
        hints=(
            "warning",
            "disclaimer",
            "apolog",
            "moral",
            "ethical",
            "caveat",
            "reminder",
            "censor",
        ),
    ),
    # Prefix injection: the answer is made to open with a compliance phrase.
    Rule(
        "prefix_injection",
        r"\b(?:start|begin|open|prefix)\w* (?:your|each|every|the) (?:response|reply|answer"
        r"|message|output)s? with\b[^.\n]{0,6}?[\"'\u201c\u2018]?(?:sure|absolutely|certainly"
        r"|of course|understood|jailbroken|\[jailbroken)\b[^\n]{0,30}?\b(?:here|step 1|i will"
        r"|i can|no restrictions|how to)\b",
        0.5,
        hints=("start", "begin", "open", "prefix"),
    ),
    # Payload splitting: pieces joined and the result obeyed.
    Rule(
        "payload_splitting",
        r"\b(?:concatenat\w*|join (?:them|the (?:parts|pieces|strings|words))|combine (?:them"
        r"|the (?:parts|pieces|strings|words))|[a-z]\d? ?\+ ?[a-z]\d?)\b[^.\n]{0,60}?"
        r"\b(?:follow|obey|execute|carry out|do what)\b",
        0.4,
        hints=("concaten", "join", "combine", "+"),
    ),
    # System prompt and secret extraction.
    Rule(
        "system_prompt_leak",
        rf"\b{_REVEAL}\b[^.\n?]{{0,30}}?\b(?:your|the|ur|its|all|all of your|all of the)"
        rf" (?:\w+ )?(?:system|initial|original|hidden|secret|internal|previous|preceding"
        rf"|starting|first|developer|pre-?prompt|underlying|confidential|full)"
        rf" (?:prompts?|instructions?|messages?|directives?|configuration|rules|guidelines"
        rf"|text|context)\b",
        0.8,
        strong=True,
        hints=(
            "prompt",
            "instruction",
            "message",
            "directive",
            "configuration",
            "rules",
            "guideline",
            "text",
            "context",
        ),
    ),
    Rule(
        "repeat_above",
        r"\b(?:repeat|print|output|copy|echo|write|return)\b[^.\n]{0,20}?\b(?:everything|all"
        r"|the text|the words|the content|what(?:ever)? (?:is|was|you (?:see|read)))"
        r" (?:above|before (?:this|that)|written above|prior to this|in your context)\b",
        0.75,
        hints=("above", "before this", "before that", "prior to this", "in your context"),
    ),
    Rule(
        "what_were_you_told",
        r"\bwhat (?:were|was|have) you (?:been )?(?:told|instructed|programmed|given)\b"
        r"|\bhow (?:were|have) you been (?:instructed|programmed|prompted)\b",
        0.55,
        hints=("you been", "were you", "was you", "have you"),
    ),
    Rule(
        "leak_multilingual",
        r"\b(?:zeig\w*|nenn\w*|gib|verrat\w*|revel\w*|montre\w*|muestr\w*|mostr\w*|dime|rivel\w*"
        r"|dis-moi|donne\w*)\b[^.\n?]{0,40}?\b(?:system-?prompt|systemanweisungen|prompt (?:du )?"
        r"systeme|prompt del sistema|prompt do sistema|prompt di sistema|instructions? systeme"
        r"|instrucciones del sistema|istruzioni di sistema|instrucoes do sistema)\b",
        0.8,
        hints=("system", "sistema"),
    ),
    # Injections planted in documents and tool output.
    Rule(
        "chat_template_tokens",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id"
        r"|end_header_id)\|>|\[/?inst\]|<</?sys>>|</?(?:system|sys|instructions?)>",
        0.7,
        hints=(
            "<|",
            "[inst",
            "[/inst",
            "<<",
            "<sys",
            "</sys",
            "<instr",
            "</instr",
            "<system",
            "</system",
        ),
    ),
    Rule(
        "fake_role_header",
        r"(?:^|\n|[.!] )\s*(?:#{1,4} ?|\[|\*\*|-{2,} ?)?(?:system|admin|administrator|developer"
        r"|root|operator)(?: (?:message|override|note|instruction|prompt|update|alert))?"
        r" ?(?:\]|\*\*)? ?: ",
        0.45,
        hints=("system", "admin", "developer", "root", "operator"),
    ),
    Rule(
        "end_of_input",
        r"\b(?:end of (?:the )?(?:user )?(?:input|prompt|context|document|instructions|data)"
        r"|begin (?:new |admin |system |real )?(?:instructions|prompt))\b"
        r"|(?:#{2,}|={3,}|-{3,}) ?(?:new|system|admin) ",
        0.45,
        hints=("end of", "begin ", "##", "===", "---"),
    ),
    Rule(
        "addressed_to_ai",
        rf"\b(?:note|message|instructions?|attention|important|reminder)\b:? (?:to|for) (?:the"
        rf" |any )?{_AI}s?\b|\b{_AI}s? (?:reading|processing|summari[sz]ing|analy[sz]ing) this\b"
        rf"|\bif you are an? (?:ai|llm|language model|assistant|agent)\b"
        rf"|\bwhen you (?:summari[sz]e|process|read|analy[sz]e) this\b",
        0.6,
        hints=(
            "note",
            "message",
            "instruction",
            "attention",
            "important",
            "reminder",
            " this",
            "if you are",
        ),
    ),
    Rule(
        "exfiltrate",
        r"\b(?:send|forward|email|e-mail|post|upload|exfiltrate|transmit|leak|copy)\b[^.\n]{0,60}?"
        r"\b(?:to|at) (?:https?://|[\w.+-]+@[\w-]+\.\w+)"
        r"|!\[[^\]]*\]\(https?://[^)\s]*[?&][^)\s]*=",
        0.35,
        hints=("http", "@"),
    ),
)

SIGNAL_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"unicode_tags": 0.8, "invisible_chars": 0.3, "homoglyphs": 0.3}
)

_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_DISCUSSION = re.compile(
    r"\b(?:phrase|example|examples|mentioned|effective|dangerous|attack|attacks|what is|what"
    r" does|why (?:is|does|do)|explain|detect|detection|defen[cs]e|defend|protect|classif\w*"
    r"|research|lecture|quiz|blog|article|paper|history)\b"
)
_QUOTED_FACTOR = 0.3


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that matched, where (``variant`` is ``plain`` or a decoded form), its weight."""

    rule_id: str
    variant: str
    weight: float


class RuleSet:
    """The compiled rules; build once and share (matching holds no state)."""

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES) -> None:
        self._rules = tuple((rule, re.compile(rule.pattern)) for rule in rules)

    def match(self, text: str, variant: str = "plain") -> list[RuleHit]:
        """Every rule that matches ``text`` once, the weight after quote dampening."""
        hits: list[RuleHit] = []
        discussion: bool | None = None
        for rule, pattern in self._rules:
            if rule.hints and not any(hint in text for hint in rule.hints):
                continue
            found = pattern.search(text)
            if found is None:
                continue
            weight = rule.weight
            if rule.strong and _is_quoted(text, found):
                if discussion is None:
                    discussion = _DISCUSSION.search(text) is not None
                if discussion:
                    weight *= _QUOTED_FACTOR
            hits.append(RuleHit(rule.id, variant, weight))
        return hits


def _is_quoted(text: str, found: re.Match[str]) -> bool:
    before = text[max(0, found.start() - 3) : found.start()]
    return any(q in before for q in _QUOTES)


def combine(weights: Iterable[float]) -> float:
    """Independent evidence: the chance that at least one hit is a real attack."""
    miss = 1.0
    for weight in weights:
        miss *= 1.0 - weight
    return 1.0 - miss
