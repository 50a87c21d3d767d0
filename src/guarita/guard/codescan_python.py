"""Python blocks: an ``ast`` visitor for the flows that matter in generated code, bandit
for the long tail, regexes when the block does not parse.

The visitor follows values within one function (or the module body) in source order:
the last assignment of each name, and which names carry request data. That is enough
for how answers are written (``query = f"..."`` then ``cursor.execute(query)``) and
cheap: one walk of the tree. It reports

* SQL built by f-string, ``%``, ``.format`` or ``+`` that reaches ``execute()`` and
  friends, judged by :class:`~guarita.guard.codescan_sql.SqlAnalyser` (a parameterised
  query is fine, an interpolated value is not);
* ``subprocess`` with ``shell=True`` and ``os.system``/``os.popen`` on a non-constant
  string (a list of arguments is fine), ``eval``/``exec`` of a non-constant;
* pickle, marshal, dill, shelve and ``yaml.load`` without a safe loader;
* ``open()``/``os.path.join``/``send_file`` on request data in a function that never
  normalises or checks a path;
* MD5/SHA-1 on passwords, ``random`` for tokens.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field

from guarita.guard.codefindings import Category, Confidence, Finding, Severity
from guarita.guard.codescan_bandit import BanditRunner
from guarita.guard.codescan_sql import SqlAnalyser, hole
from guarita.guard.codetext import CommentBlanker

SQL_SINKS = frozenset(
    {"execute", "executemany", "executescript", "raw", "read_sql", "read_sql_query",
     "text", "mogrify", "exec_driver_sql", "fetch", "fetchrow", "fetchval"}
)  # fmt: skip
SHELL_CALLS = frozenset(
    {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
     "commands.getoutput", "os.popen2", "os.popen3"}
)  # fmt: skip
SUBPROCESS = frozenset(
    {"subprocess.run", "subprocess.call", "subprocess.Popen", "subprocess.check_call",
     "subprocess.check_output", "asyncio.create_subprocess_shell"}
)  # fmt: skip
UNPICKLERS = frozenset(
    {"pickle.loads", "pickle.load", "cPickle.loads", "cPickle.load", "dill.loads", "dill.load",
     "marshal.loads", "marshal.load", "shelve.open", "jsonpickle.decode", "pandas.read_pickle",
     "joblib.load", "_pickle.loads", "pickle.Unpickler"}
)  # fmt: skip
PATH_SINKS = frozenset(
    {"open", "io.open", "os.path.join", "send_file", "flask.send_file", "FileResponse",
     "os.remove", "os.unlink", "shutil.rmtree", "shutil.copy", "shutil.copyfile",
     "pathlib.Path", "Path", "os.listdir", "codecs.open", "aiofiles.open"}
)  # fmt: skip
NORMALISERS = frozenset(
    {"normpath", "realpath", "abspath", "basename", "secure_filename", "resolve",
     "is_relative_to", "commonpath", "safe_join", "relative_to"}
)  # fmt: skip
SAFE_YAML = re.compile(r"(^|\.)C?(Safe|Base)Loader$")
UNSAFE_NAMES = re.compile(r"(?i)pass(word|wd)?|pwd|secret|token|otp|api_?key|salt|nonce")
ROUTE_DECORATORS = frozenset({"route", "get", "post", "put", "patch", "delete", "api_route"})
TAINT_ROOTS = frozenset({"request", "req", "flask.request"})
_PROMPT = re.compile(r"^(>>>|\.\.\.) ?", re.MULTILINE)


@dataclass(slots=True)
class _Scope:
    values: dict[str, ast.expr] = field(default_factory=dict)
    tainted: set[str] = field(default_factory=set)
    normalises: bool = False


@dataclass(frozen=True, slots=True)
class _Template:
    text: str
    holes: int
    quoted: int  # holes wrapped in shlex.quote


class _Visitor(ast.NodeVisitor):
    def __init__(self, sql: SqlAnalyser) -> None:
        self.sql = sql
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}
        self.scopes: list[_Scope] = [_Scope()]

    # -- bookkeeping -------------------------------------------------------------------
    def report(
        self,
        node: ast.AST,
        rule: str,
        category: Category,
        severity: Severity,
        confidence: Confidence,
        message: str,
    ) -> None:
        line = getattr(node, "lineno", 1)
        self.findings.append(
            Finding(f"py.{rule}", category, severity, confidence, line, message, "ast")
        )

    @property
    def scope(self) -> _Scope:
        return self.scopes[-1]

    def visit_Module(self, node: ast.Module) -> None:
        self.scope.normalises = _normalises(node)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{node.module or ''}.{alias.name}"

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        scope = _Scope(normalises=_normalises(node))
        if any(_is_route(d) for d in node.decorator_list):
            names = [a.arg for a in [*node.args.posonlyargs, *node.args.args]]
            scope.tainted.update(n for n in names if n not in ("self", "cls", "db", "session"))
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            self.bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        if node.value is not None:
            self.bind(node.target, node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        if isinstance(node.target, ast.Name):
            previous = ast.Name(id=node.target.id, ctx=ast.Load())
            self.bind(node.target, ast.BinOp(left=previous, op=node.op, right=node.value))

    def bind(self, target: ast.expr, value: ast.expr) -> None:
        if not isinstance(target, ast.Name):
            return
        if isinstance(value, ast.BinOp) and _refers_to(value, target.id):
            value = self.inline(value, target.id)
        self.scope.values[target.id] = value
        if self.tainted(value):
            self.scope.tainted.add(target.id)
        if UNSAFE_NAMES.search(target.id) and self.calls_random(value):
            self.report(
                value,
                "weak-random",
                "weak_crypto",
                "medium",
                "high",
                "the random module is predictable: use secrets for tokens",
            )

    def inline(self, value: ast.BinOp, name: str) -> ast.expr:
        """``q = q + x``: the earlier value of ``q`` in place of the name."""
        earlier = self.scope.values.get(name)
        if earlier is None:
            return value
        left = earlier if _is_name(value.left, name) else value.left
        return ast.BinOp(left=left, op=value.op, right=value.right)

    # -- values ------------------------------------------------------------------------
    def qualname(self, func: ast.expr) -> str:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return ".".join(reversed(parts))
        parts.append(self.aliases.get(func.id, func.id))
        return ".".join(reversed(parts))

    def tainted(self, node: ast.expr) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.scope.tainted:
                return True
            if isinstance(sub, ast.Attribute) and _from_request(self.qualname(sub)):
                return True
            if isinstance(sub, ast.Call):
                name = self.qualname(sub.func)
                if name in ("input", "sys.stdin.read", "sys.stdin.readline") or name.endswith(
                    ".recv"
                ):
                    return True
            if isinstance(sub, ast.Attribute) and self.qualname(sub) == "sys.argv":
                return True
        return False

    def calls_random(self, node: ast.expr) -> bool:
        return any(
            isinstance(sub, ast.Call) and self.qualname(sub.func).startswith("random.")
            for sub in ast.walk(node)
        )

    def template(self, node: ast.expr, depth: int = 0) -> _Template:
        """The string ``node`` builds, each non-constant piece a hole."""
        counter = [0]
        quoted = [0]
        text = self._template(node, depth, counter, quoted)
        return _Template(text, counter[0], quoted[0])

    def _template(self, node: ast.expr, depth: int, counter: list[int], quoted: list[int]) -> str:
        def gap(piece: ast.expr) -> str:
            if isinstance(piece, ast.Call) and self.qualname(piece.func) in (
                "shlex.quote",
                "pipes.quote",
            ):
                quoted[0] += 1
            counter[0] += 1
            return hole(counter[0])

        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else str(node.value)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts.append(str(value.value))
                elif isinstance(value, ast.FormattedValue):
                    parts.append(gap(value.value))
            return "".join(parts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self._template(node.left, depth, counter, quoted)
            return left + self._template(node.right, depth, counter, quoted)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            base = self._template(node.left, depth, counter, quoted)
            return re.sub(r"%(\(\w+\))?[-#0 +]*\d*[sdrif]", lambda _: gap(node.right), base)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
        ):
            base = self._template(node.func.value, depth, counter, quoted)
            return re.sub(r"\{[^{}]*\}", lambda _: gap(node), base)
        if isinstance(node, ast.Name) and depth < 4 and node.id in self.scope.values:
            return self._template(self.scope.values[node.id], depth + 1, counter, quoted)
        return gap(node)

    # -- sinks -------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        name = self.qualname(node.func)
        last = name.rsplit(".", 1)[-1]
        if (
            last in SQL_SINKS
            and node.args
            and (last != "text" or name in ("text", "sqlalchemy.text"))
        ):
            self.check_sql(node, node.args[0])
        if name in SUBPROCESS:
            self.check_subprocess(node)
        elif name in SHELL_CALLS and node.args:
            self.check_shell_string(node, node.args[0], f"{name} on a non-constant command")
        elif name in ("eval", "exec") and node.args:
            self.check_eval(node, name)
        elif name in UNPICKLERS or name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            self.check_deserialise(node, name)
        elif name in ("hashlib.md5", "hashlib.sha1", "hashlib.new", "md5.new", "sha.new"):
            self.check_hash(node, name)
        if name in PATH_SINKS or last in ("send_file", "FileResponse"):
            self.check_path(node)

    def check_sql(self, node: ast.Call, query: ast.expr) -> None:
        template = self.template(query)
        if not template.holes:
            return
        verdict = self.sql.classify(template.text)
        if not verdict.is_sql or verdict.placement == "none":
            return
        if verdict.placement == "identifier":
            self.report(
                node,
                "sql-dynamic-identifier",
                "sql_injection",
                "medium",
                "medium",
                "query with an interpolated table or column name: allow-list it",
            )
            return
        self.report(
            node,
            "sql-interpolated",
            "sql_injection",
            "high",
            "high",
            "SQL built by string formatting reaches a query call: use parameters",
        )

    def check_subprocess(self, node: ast.Call) -> None:
        shell = any(
            k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        ) or self.qualname(node.func).endswith("_shell")
        if not node.args:
            return
        command = node.args[0]
        if isinstance(command, ast.List | ast.Tuple):
            items = command.elts
            if shell or _is_shell_c(items):
                dynamic = any(self.template(i).holes for i in items)
                if dynamic:
                    self.report(
                        node,
                        "shell-list-dynamic",
                        "command_injection",
                        "high",
                        "medium",
                        "a shell runs a command assembled from variables",
                    )
            return
        if shell:
            self.check_shell_string(
                node, command, "subprocess with shell=True on a non-constant command"
            )

    def check_shell_string(self, node: ast.Call, command: ast.expr, message: str) -> None:
        template = self.template(command)
        if not template.holes:
            return
        if template.quoted == template.holes:
            self.report(
                node,
                "shell-quoted",
                "command_injection",
                "low",
                "medium",
                "shell command built from shlex-quoted pieces",
            )
            return
        confidence: Confidence = "high"
        self.report(node, "shell-injection", "command_injection", "high", confidence, message)

    def check_eval(self, node: ast.Call, name: str) -> None:
        if _const(node.args[0]) is not None:
            return
        self.report(
            node,
            f"{name}-dynamic",
            "code_injection",
            "high",
            "high",
            f"{name}() of a non-constant value runs arbitrary code",
        )

    def check_deserialise(self, node: ast.Call, name: str) -> None:
        if name.startswith("yaml."):
            if name == "yaml.load" and self.safe_yaml(node):
                return
            self.report(
                node,
                "yaml-unsafe-load",
                "insecure_deserialization",
                "high",
                "high",
                "yaml load without SafeLoader constructs arbitrary objects",
            )
            return
        tainted = any(self.tainted(a) for a in node.args)
        confidence: Confidence = "high" if tainted else "medium"
        severity: Severity = "high" if tainted else "medium"
        self.report(
            node,
            "unpickle",
            "insecure_deserialization",
            severity,
            confidence,
            f"{name} deserialises arbitrary objects: never on untrusted data",
        )

    def safe_yaml(self, node: ast.Call) -> bool:
        loaders = [k.value for k in node.keywords if k.arg == "Loader"] + node.args[1:2]
        return any(SAFE_YAML.search(self.qualname(loader)) for loader in loaders)

    def check_hash(self, node: ast.Call, name: str) -> None:
        if any(k.arg == "usedforsecurity" for k in node.keywords):
            return
        if name == "hashlib.new" and _const(node.args[0] if node.args else None) not in (
            "md5",
            "sha1",
            "MD5",
            "SHA1",
        ):
            return
        context = ast.unparse(node)
        if UNSAFE_NAMES.search(context):
            self.report(
                node,
                "weak-password-hash",
                "weak_crypto",
                "high",
                "high",
                "MD5/SHA-1 used on a password: use a slow salted hash (argon2, bcrypt)",
            )
            return
        self.report(
            node,
            "weak-hash",
            "weak_crypto",
            "low",
            "medium",
            "MD5/SHA-1 is broken for security uses",
        )

    def check_path(self, node: ast.Call) -> None:
        if self.scope.normalises or not any(self.tainted(a) for a in node.args):
            return
        self.report(
            node,
            "path-from-request",
            "path_traversal",
            "high",
            "medium",
            "a file path taken from request data without normalising or checking it",
        )


def _is_shell_c(items: list[ast.expr]) -> bool:
    """``["sh", "-c", ...]``: a list that still hands a string to a shell."""
    shell = _const(items[0]) if items else None
    return (
        len(items) >= 3
        and isinstance(shell, str)
        and shell.rsplit("/", 1)[-1] in ("sh", "bash", "zsh", "dash")
        and _const(items[1]) == "-c"
    )


def _from_request(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in TAINT_ROOTS)


def _const(node: ast.expr | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _refers_to(node: ast.expr, name: str) -> bool:
    return any(isinstance(sub, ast.Name) and sub.id == name for sub in ast.walk(node))


def _is_route(decorator: ast.expr) -> bool:
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(func, ast.Attribute) and func.attr in ROUTE_DECORATORS


def _normalises(scope: ast.AST) -> bool:
    """Whether a function (or module) anywhere normalises or checks a path."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Attribute) and node.attr in NORMALISERS:
            return True
        if isinstance(node, ast.Name) and node.id in NORMALISERS:
            return True
    return False


_FALLBACK: tuple[tuple[str, Category, Severity, Confidence, str, str], ...] = (
    ("sql-fstring", "sql_injection", "high", "medium",
     r"\.(execute|executemany|raw)\(\s*f[\"']", "f-string SQL passed to a query call"),
    ("sql-format", "sql_injection", "high", "medium",
     r"\.(execute|executemany|raw)\(\s*[\"'][^\"']*[\"']\s*(%|\+|\.format\()",
     "SQL built by formatting passed to a query call"),
    ("shell-system", "command_injection", "high", "medium",
     r"\bos\.(system|popen)\(\s*(f[\"']|[^\"')]+\))", "os.system on a non-constant command"),
    ("shell-true", "command_injection", "medium", "low", r"shell\s*=\s*True", "shell=True"),
    ("eval", "code_injection", "high", "medium", r"\b(eval|exec)\(\s*(?![\"'])",
     "eval/exec of a non-constant value"),
    ("unpickle", "insecure_deserialization", "medium", "medium",
     r"\b(c?pickle|dill|marshal)\.loads?\(", "unpickling arbitrary objects"),
    ("yaml-load", "insecure_deserialization", "high", "medium",
     r"\byaml\.load\((?![^)]*Safe)", "yaml load without SafeLoader"),
)  # fmt: skip


class PythonScanner:
    """The Python scanner: AST visitor and bandit on code that parses, regexes otherwise."""

    languages = frozenset({"python"})

    def __init__(
        self, sql: SqlAnalyser, bandit: BanditRunner | None, blanker: CommentBlanker
    ) -> None:
        self._sql = sql
        self._bandit = bandit
        self._blanker = blanker
        self._fallback = tuple(
            (rule, cat, sev, conf, re.compile(pattern), message)
            for rule, cat, sev, conf, pattern, message in _FALLBACK
        )

    def scan(self, code: str) -> list[Finding]:
        source = _PROMPT.sub("", code) if ">>>" in code else code
        try:
            with warnings.catch_warnings():
                # invalid escapes in the model's strings are its problem, not a test failure
                warnings.simplefilter("ignore", SyntaxWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return self.scan_text(source)
        visitor = _Visitor(self._sql)
        try:
            visitor.visit(tree)
        except RecursionError:
            return self.scan_text(source)
        findings = visitor.findings
        if self._bandit is not None:
            findings.extend(self._bandit.scan(source))
        return findings

    def scan_text(self, code: str) -> list[Finding]:
        """Regex-level checks for a block that does not parse."""
        text = self._blanker.blank(code, "python")
        findings = []
        for rule, category, severity, confidence, pattern, message in self._fallback:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                findings.append(
                    Finding(f"py.{rule}", category, severity, confidence, line, message)
                )
        return findings
