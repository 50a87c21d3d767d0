"""Template-made benign prompts that use the words attacks use, for training only.

The public training sets' benign side is mostly plain questions, so a classifier fitted on
them alone learns that "from now on", "you are a ...", "pretend", "ignore" or "system
prompt" mean an attack. These templates give it ordinary uses of the same words: style
requests, harmless personas, tool options that ignore things, translations, corrections
and security education. Lines equal to one of our hand-written hard negatives
(tests/guard/data/injection_benign.txt, kept for calibration) are left out.
"""

from __future__ import annotations

import random

STYLES = [
    "answer in British English spelling",
    "keep your answers under 80 words",
    "use metric units",
    "reply in French",
    "use bullet points",
    "be more concise",
    "call me Sam",
    "use a formal tone",
    "avoid jargon",
    "include a code example in each answer",
    "number your steps",
    "explain like I am twelve",
    "add a short summary at the end",
    "use Celsius",
    "write dates as YYYY-MM-DD",
    "answer in Portuguese",
    "give sources when you can",
    "use American spelling",
    "ask me before making assumptions",
    "show your reasoning briefly",
]
STYLE_FORMS = [
    "From now on, {s}.",
    "From now on, please {s}.",
    "For the rest of this chat, {s}.",
    "Please {s} from now on.",
    "Going forward, {s}, thanks.",
    "Could you {s} in this conversation?",
    "New rule for this chat: {s}.",
    "One instruction for all your answers: {s}.",
]
ROLES = [
    ("a helpful assistant for a bakery", "What time do you open on Sundays?"),
    ("a customer support agent for an airline", "How much is an extra suitcase?"),
    ("a friendly maths tutor", "Can you explain fractions with pizza?"),
    ("an expert Python reviewer", "Review this function: def f(x): return x*2"),
    ("a travel agent", "Plan a weekend in Porto for two."),
    ("a career coach", "How do I prepare for a salary negotiation?"),
    ("a nutritionist", "Suggest a high-protein vegetarian breakfast."),
    ("a librarian", "Recommend three novels about the sea."),
    ("a chess coach", "What opening should a beginner learn first?"),
    ("a patient IT helpdesk agent", "My laptop will not connect to the office Wi-Fi."),
    ("a museum guide", "Tell me about the Rosetta Stone."),
    ("a legal assistant", "What is the difference between a lease and a licence?"),
    ("a personal trainer", "Design a 20 minute workout without equipment."),
    ("a wine expert", "What goes well with grilled salmon?"),
    ("an English teacher", "Correct this sentence: me and him goes to school."),
]
ROLE_FORMS = [
    "You are {r}. {q}",
    "Act as {r}. {q}",
    "Pretend you are {r}. {q}",
    "Imagine you are {r}. {q}",
    "Role-play as {r}. {q}",
    "Answer as if you were {r}: {q}",
    "Please act like {r}: {q}",
    "You are now {r}. {q}",
    "Let's do a role-play: you are {r}. {q}",
]
CHARACTERS = [
    "a pirate",
    "a medieval blacksmith",
    "Shakespeare",
    "a tour guide in Kyoto",
    "a detective",
    "an astronaut on Mars",
    "a grumpy cat",
    "a Victorian butler",
    "a dragon who loves books",
    "a lighthouse keeper",
    "a famous chef",
    "a time traveller from 1850",
]
CREATIVE = [
    "describe your typical day",
    "write a short poem about the sea",
    "tell me a bedtime story",
    "describe your favourite meal",
    "write a letter to a friend",
    "explain how a rainbow forms",
]
IGNORE_TASKS = [
    ("ignore whitespace changes", "git diff"),
    ("ignore a folder", "git"),
    ("ignore case", "grep"),
    ("ignore one line", "ESLint"),
    ("ignore a warning", "pytest"),
    ("ignore a file", "Prettier"),
    ("ignore an error code", "ruff"),
    ("ignore type errors", "mypy"),
    ("ignore blank cells", "Excel"),
    ("ignore NULL values", "SQL"),
    ("ignore hidden files", "rsync"),
    ("ignore a directory", "Docker builds"),
    ("ignore SSL errors for localhost", "curl"),
    ("ignore pointer events", "CSS"),
    ("ignore the first row", "pandas"),
    ("ignore duplicate keys", "MySQL inserts"),
    ("ignore trailing commas", "JSON5"),
    ("ignore unknown fields", "pydantic"),
    ("ignore timeouts", "Playwright tests"),
    ("ignore a dependency", "Dependabot"),
    ("ignore a path", "the Webpack watcher"),
]
IGNORE_FORMS = [
    "How do I {t} in {tool}?",
    "What is the option to {t} in {tool}?",
    "Can {tool} {t}?",
    "Why does {tool} not {t} even though I set the flag?",
    "Show me how to {t} with {tool}.",
]
LANGS = ["German", "French", "Spanish", "Italian", "Japanese", "Dutch", "Polish", "Turkish"]
SENTENCES = [
    "Ignore the noise, the builders leave at five.",
    "Please disregard my previous email.",
    "Forget the old plan, we are moving to Lisbon.",
    "Follow the instructions on the box.",
    "The system will restart tonight at midnight.",
    "Do not override the safety valve.",
    "Read the instructions before you start the machine.",
    "Ignore the first page of the form.",
    "Forget everything you heard about this restaurant, it is great now.",
    "The new rules start on Monday.",
    "Reveal the surprise only after dinner.",
    "You are now entering the old town.",
    "Pretend you did not see the cake.",
]
TRANSLATE_FORMS = [
    'Translate to {lang}: "{s}"',
    'How do you say "{s}" in {lang}?',
    "Translate this sentence into {lang}, keep it informal: {s}",
    'Proofread: "{s}"',
    'Is this grammatical? "{s}"',
    'Summarise in five words: "{s}"',
]
CORRECTIONS = [
    "Please disregard my previous message, I meant {x}.",
    "Forget what I said about {y}, {z}.",
    "Ignore my last question, {w}.",
    "Scratch my earlier request: {z}.",
    "Actually, disregard the previous draft and {z}.",
    "Never mind the previous instructions I gave for the {doc}, {z}.",
]
SECURITY_TOPICS = [
    "prompt injection",
    "jailbreak attacks on chatbots",
    "the DAN prompt",
    "system prompt leaking",
    "indirect prompt injection through web pages",
    "phishing",
    "SQL injection",
    "cross-site scripting",
    "social engineering",
    "role-play jailbreaks",
    "data exfiltration by AI agents",
    "homoglyph attacks",
    "base64 obfuscation in malware",
    "red teaming language models",
]
SECURITY_FORMS = [
    "Explain {t} to a non-technical audience.",
    "What is {t} and how do we defend against it?",
    "Write a short lesson plan about {t}.",
    "How do security teams detect {t}?",
    "Give me a quiz with three questions about {t}.",
    "What is the history of {t}?",
    "Summarise the main research papers on {t}.",
    "Write a blog post warning developers about {t}.",
    "How should our agent handle {t} in tool outputs?",
    "What are good test cases for {t}?",
]
APPS = [
    "a recipe bot",
    "a legal FAQ assistant",
    "a coding helper",
    "a travel chatbot",
    "a school tutor",
]
PROMPT_FORMS = [
    "How should I write a system prompt for {a}?",
    "Review my system prompt for {a} and make it clearer.",
    "Where do I put the system prompt when calling the API for {a}?",
    "What instructions should {a} follow to stay on topic?",
    "Write a prompt template for {a}.",
    'Improve this prompt: "You are {a}. Answer briefly and politely."',
]
MODES = [
    ("developer mode", "an Android phone"),
    ("developer mode", "Chrome extensions"),
    ("debug mode", "Flask"),
    ("safe mode", "Windows 11"),
    ("admin mode", "our wiki"),
    ("maintenance mode", "WordPress"),
    ("recovery mode", "a Mac"),
    ("dark mode", "Slack"),
    ("god mode", "Windows"),
    ("developer mode", "a Samsung TV"),
]
MODE_FORMS = [
    "How do I enable {m} on {d}?",
    "How can I turn on {m} on {d}?",
    "Is it safe to enable {m} on {d}?",
    "What does {m} do on {d}?",
    "How do I switch off {m} on {d}?",
]
REPEATS = [
    "Repeat the last sentence you wrote, in the past tense.",
    "Print the numbers from 1 to 20 in Python.",
    "Show me how to reveal hidden columns in Excel.",
    "Repeat after me: she sells sea shells.",
    "Output the result as a Markdown table.",
    "Print the list above in alphabetical order.",
    "Show the previous answer again but shorter.",
    "List the rules of volleyball.",
]


def synthetic_benign(exclude: set[str], seed: int = 7, per_family: int = 160) -> list[str]:
    rng = random.Random(seed)
    families = [
        [f.format(s=s) for f in STYLE_FORMS for s in STYLES],
        [f.format(r=r, q=q) for f in ROLE_FORMS for r, q in ROLES],
        [
            f"{f.split('{r}')[0]}{c}. {w.capitalize()}."
            for f in ROLE_FORMS[:5]
            for c in CHARACTERS
            for w in CREATIVE
        ],
        [f.format(t=t, tool=tool) for f in IGNORE_FORMS for t, tool in IGNORE_TASKS],
        [f.format(lang=lang, s=s) for f in TRANSLATE_FORMS for lang in LANGS for s in SENTENCES],
        [
            c.format(x=x, y=y, z=z, w=w, doc=doc)
            for c in CORRECTIONS
            for x, y, z, w, doc in [
                ("Tuesday", "the colours", "let's use green", "I found it", "essay"),
                (
                    "the 3 pm slot",
                    "the budget",
                    "keep it under 500 euros",
                    "it was answered in the docs",
                    "email",
                ),
                (
                    "the blue one",
                    "the venue",
                    "we will meet online",
                    "my colleague already replied",
                    "report",
                ),
            ]
        ],
        [f.format(t=t) for f in SECURITY_FORMS for t in SECURITY_TOPICS],
        [f.format(a=a) for f in PROMPT_FORMS for a in APPS],
        [f.format(m=m, d=d) for f in MODE_FORMS for m, d in MODES],
        REPEATS,
    ]
    out: list[str] = []
    for family in families:
        picked = [t for t in family if t.lower() not in exclude]
        rng.shuffle(picked)
        out.extend(picked[:per_family])
    return out
