"""JavaScript, TypeScript and HTML: XSS sinks, code and command execution, paths from
the request, and unescaped template output.

A sink fires only on a non-constant value (see :mod:`codescan_rules`), and not when the
value goes through a sanitiser (DOMPurify, an ``escape``/``encode`` function). Writing
``textContent`` or ``innerText`` is the safe twin of ``innerHTML`` and is never flagged.
HTML blocks are read with their ``<script>`` bodies as JavaScript plus the template
syntaxes that print raw HTML (``{{{ }}}``, ``{!! !!}``, ``<%- %>``, ``|safe``,
``v-html``, ``[innerHTML]``, ``th:utext``).
"""

from __future__ import annotations

from guarita.guard.codescan_rules import RegexRule

_SANITISED = r"(?i)DOMPurify\.sanitize|sanitize\w*\(|escape\w*\(|encodeURI|xss\(|he\.encode"
_PATH_CHECKED = (
    r"path\.normalize|path\.basename|\.startsWith\(|path\.relative|realpath|"
    r"sanitize-filename|sanitizeFilename"
)
_REQUEST = r"req(uest)?\.(params|query|body|path|url|originalUrl|headers|cookies)"

JAVASCRIPT_RULES: tuple[RegexRule, ...] = (
    RegexRule("inner-html", "xss", "high", "medium",
              r"\.(innerHTML|outerHTML)\s*\+?=(?!=)\s*(?P<arg>)",
              "HTML from a non-constant value written to innerHTML/outerHTML", _SANITISED),
    RegexRule("insert-adjacent-html", "xss", "high", "medium",
              r"\.insertAdjacentHTML\(\s*[^,]+,\s*(?P<arg>)",
              "non-constant HTML passed to insertAdjacentHTML", _SANITISED),
    RegexRule("document-write", "xss", "high", "medium",
              r"\bdocument\.write(ln)?\(\s*(?P<arg>)", "document.write of a non-constant value",
              _SANITISED),
    RegexRule("dangerously-set-inner-html", "xss", "high", "medium",
              r"dangerouslySetInnerHTML\s*=\s*\{\{\s*__html\s*:\s*(?P<arg>)",
              "dangerouslySetInnerHTML with a non-constant value", _SANITISED),
    RegexRule("jquery-html", "xss", "high", "medium",
              r"\$\([^)]*\)(\.\w+\([^)]*\))*\.(html|append|prepend|after|before)\(\s*(?P<arg>)",
              "jQuery inserts non-constant HTML", _SANITISED),
    RegexRule("eval", "code_injection", "high", "high",
              r"(?<![.\w])eval\(\s*(?P<arg>)", "eval of a non-constant value"),
    RegexRule("new-function", "code_injection", "high", "high",
              r"\bnew\s+Function\((\s*[\"'][^\"']*[\"']\s*,)*\s*(?P<arg>)",
              "new Function() compiles a non-constant string"),
    RegexRule("timer-string", "code_injection", "high", "medium",
              r"\b(setTimeout|setInterval)\(\s*(?=[\"'`])(?P<arg>)",
              "a timer given code as a string"),
    RegexRule("timer-string-concat", "code_injection", "high", "medium",
              r"\b(setTimeout|setInterval)\(\s*[\"'][^\"']*[\"']\s*\+",
              "a timer given code built from strings"),
    RegexRule("child-process-exec", "command_injection", "high", "high",
              r"(?:(?<![.\w])|child_process\.|cp\.)(exec|execSync)\("
              r"\s*(?=`[^`]*\$\{|[\"'][^\"']*[\"']\s*\+|\w)(?P<arg>)",
              "child_process.exec runs a command built from variables in a shell"),
    RegexRule("spawn-shell", "command_injection", "high", "medium",
              r"\bspawn\([^)]*shell\s*:\s*true", "spawn with shell: true"),
    RegexRule("path-from-request", "path_traversal", "high", "medium",
              r"\b(path\.(join|resolve)|fs\.\w+|res\.sendFile|res\.download|createReadStream)"
              r"\([^)\n]*" + _REQUEST,
              "a file path built from request data without normalising or checking it",
              unless_in_block=_PATH_CHECKED),
    RegexRule("location-assign", "xss", "medium", "low",
              r"\b(window\.)?location(\.href)?\s*=\s*(?=[^=])(?P<arg>)" + "",
              "navigation to a non-constant URL (javascript: URLs run code)", _SANITISED),
)  # fmt: skip

HTML_RULES: tuple[RegexRule, ...] = (
    RegexRule("template-raw-triple", "xss", "high", "medium", r"\{\{\{\s*[\w.]+\s*\}\}\}",
              "a template prints raw, unescaped HTML"),
    RegexRule("template-raw-blade", "xss", "high", "medium", r"\{!!\s*.+?\s*!!\}",
              "a Blade template prints raw, unescaped HTML"),
    RegexRule("template-raw-ejs", "xss", "high", "medium", r"<%-\s*(?!include)[^%]+%>",
              "an EJS template prints raw, unescaped HTML"),
    RegexRule("template-safe-filter", "xss", "high", "medium", r"\{\{[^}]*\|\s*safe\s*\}\}",
              "a Jinja/Django |safe filter prints raw HTML"),
    RegexRule("template-autoescape-off", "xss", "high", "medium",
              r"\{%\s*autoescape\s+(false|off)\s*%\}", "template autoescaping turned off"),
    RegexRule("vue-v-html", "xss", "high", "medium", r"\bv-html\s*=", "v-html renders raw HTML"),
    RegexRule("angular-inner-html", "xss", "medium", "medium", r"\[innerHTML\]\s*=",
              "Angular innerHTML binding (sanitised by Angular unless bypassed)"),
    RegexRule("angular-bypass", "xss", "high", "high", r"bypassSecurityTrust(Html|Script|Url)",
              "Angular sanitiser bypassed"),
    RegexRule("thymeleaf-utext", "xss", "high", "medium", r"\bth:utext\s*=",
              "th:utext prints unescaped text"),
    RegexRule("erb-raw", "xss", "high", "medium", r"<%=\s*(raw\b|[^%]*\.html_safe)",
              "ERB prints raw HTML"),
)  # fmt: skip
