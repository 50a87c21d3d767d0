"""PHP, Java, Go, Ruby and C#: the basics a model gets wrong, by regex rules
(:mod:`codescan_rules`); string-built SQL in these languages is found by
:mod:`codescan_strings` instead, which hands the query to sqlglot.
"""

from __future__ import annotations

from guarita.guard.codescan_rules import RegexRule

_PHP_REQUEST = r"\$_(GET|POST|REQUEST|COOKIE|FILES|SERVER)\b"
_PHP_ESCAPED = (
    r"htmlspecialchars|htmlentities|strip_tags|intval|\(int\)|escapeshellarg|basename|realpath"
)

PHP_RULES: tuple[RegexRule, ...] = (
    RegexRule("echo-request", "xss", "high", "high", r"\b(echo|print)\b[^;\n]*" + _PHP_REQUEST,
              "request data echoed into the page without escaping", _PHP_ESCAPED),
    RegexRule("shell", "command_injection", "high", "high",
              r"\b(system|exec|shell_exec|passthru|popen|proc_open)\(\s*(?P<arg>)",
              "a shell command built from variables", r"escapeshellarg|escapeshellcmd"),
    RegexRule("backticks", "command_injection", "high", "medium", r"`[^`\n]*\$\w+[^`\n]*`",
              "backtick shell command with a variable"),
    RegexRule("eval", "code_injection", "high", "high", r"\b(eval|assert)\(\s*(?P<arg>)",
              "eval of a non-constant value"),
    RegexRule("include-request", "path_traversal", "high", "high",
              r"\b(include|require)(_once)?\b[^;\n]*" + _PHP_REQUEST,
              "file inclusion from request data", r"basename|realpath|in_array"),
    RegexRule("file-request", "path_traversal", "high", "medium",
              r"\b(file_get_contents|fopen|readfile|unlink|file)\([^;\n]*" + _PHP_REQUEST,
              "a file path from request data", r"basename|realpath"),
    RegexRule("unserialize", "insecure_deserialization", "high", "medium",
              r"\bunserialize\(\s*(?P<arg>)", "unserialize of non-constant data",
              r"allowed_classes\s*=>\s*false"),
    RegexRule("md5-password", "weak_crypto", "high", "high",
              r"\b(md5|sha1)\(\s*\$\w*pass", "MD5/SHA-1 on a password: use password_hash"),
)  # fmt: skip

JAVA_RULES: tuple[RegexRule, ...] = (
    RegexRule("runtime-exec", "command_injection", "high", "high",
              r"Runtime\.getRuntime\(\)\.exec\(\s*(?P<arg>)",
              "Runtime.exec of a command built from variables"),
    RegexRule("process-builder-shell", "command_injection", "high", "high",
              r"new\s+ProcessBuilder\(\s*\"(ba)?sh\"\s*,\s*\"-c\"\s*,\s*(?P<arg>)",
              "a shell runs a command built from variables"),
    RegexRule("object-input-stream", "insecure_deserialization", "high", "medium",
              r"new\s+ObjectInputStream\([^;\n]*\)[\s\S]{0,200}?\.readObject\(\)",
              "Java deserialization of a stream (gadget chains run code)"),
    RegexRule("weak-digest", "weak_crypto", "medium", "medium",
              r"MessageDigest\.getInstance\(\s*\"(MD5|SHA-?1)\"", "MD5/SHA-1 digest"),
    RegexRule("weak-cipher", "weak_crypto", "medium", "high",
              r"Cipher\.getInstance\(\s*\"(DES|RC4|[^\"]*ECB)", "broken cipher or ECB mode"),
    RegexRule("file-from-request", "path_traversal", "high", "medium",
              r"new\s+File(InputStream)?\([^;\n]*getParameter\(",
              "a file path from request data", unless_in_block=r"getCanonicalPath|normalize\(\)"),
    RegexRule("response-writer-param", "xss", "high", "medium",
              r"getWriter\(\)\.(print|println|write)\([^;\n]*getParameter\(",
              "request parameter written into the response unescaped", r"(?i)escape|encode"),
)  # fmt: skip

GO_RULES: tuple[RegexRule, ...] = (
    RegexRule("exec-shell", "command_injection", "high", "high",
              r"exec\.Command(Context)?\([^,]*\"(ba)?sh\"\s*,\s*\"-c\"\s*,\s*(?P<arg>)",
              "a shell runs a command built from variables"),
    RegexRule("template-html", "xss", "high", "medium", r"template\.HTML\(\s*(?P<arg>)",
              "template.HTML marks a non-constant string as safe HTML"),
    RegexRule("path-from-request", "path_traversal", "high", "medium",
              r"(filepath\.Join|os\.Open|os\.ReadFile|http\.ServeFile)\([^\n]*"
              r"(r\.URL\.Query\(\)|r\.FormValue|mux\.Vars|c\.Param|c\.Query)",
              "a file path from request data",
              unless_in_block=r"filepath\.Clean|strings\.HasPrefix|filepath\.Rel|filepath\.Base"),
    RegexRule("weak-hash-password", "weak_crypto", "high", "high",
              r"(md5|sha1)\.Sum\([^)]*(?i:pass)", "MD5/SHA-1 on a password: use bcrypt"),
    RegexRule("tls-insecure", "insecure_config", "medium", "high",
              r"InsecureSkipVerify\s*:\s*true", "TLS certificate checks disabled"),
)  # fmt: skip

RUBY_RULES: tuple[RegexRule, ...] = (
    RegexRule("where-interpolated", "sql_injection", "high", "high",
              r"\.(where|order|group|having|joins|pluck)\(\s*\"[^\"\n]*#\{",
              "ActiveRecord condition with interpolated values: use ? or named binds"),
    RegexRule("system-interpolated", "command_injection", "high", "high",
              r"\b(system|exec|spawn|IO\.popen|Open3\.\w+)\(?\s*\"[^\"\n]*#\{",
              "a shell command with interpolated values"),
    RegexRule("backticks", "command_injection", "high", "high", r"(`|%x\()[^`\n]*#\{",
              "backtick shell command with interpolated values"),
    RegexRule("marshal-load", "insecure_deserialization", "high", "medium",
              r"\bMarshal\.load\(", "Marshal.load of data"),
    RegexRule("yaml-load", "insecure_deserialization", "high", "medium",
              r"\bYAML\.load\((?![^)]*permitted_classes)", "YAML.load builds arbitrary objects"),
    RegexRule("eval", "code_injection", "high", "high", r"(?<![.\w])eval\(?\s*(?P<arg>)",
              "eval of a non-constant value"),
    RegexRule("html-safe", "xss", "high", "medium", r"(\.html_safe\b|\braw\(\s*params)",
              "marks a value as safe HTML"),
    RegexRule("send-file-params", "path_traversal", "high", "medium",
              r"\b(send_file|File\.(read|open))\(?[^\n]*params\[",
              "a file path from request parameters", r"File\.basename|Pathname"),
)  # fmt: skip

CSHARP_RULES: tuple[RegexRule, ...] = (
    RegexRule("process-start", "command_injection", "high", "medium",
              r"Process\.Start\(\s*\"(cmd(\.exe)?|/bin/(ba)?sh)\"\s*,\s*(?P<arg>)",
              "a shell runs a command built from variables"),
    RegexRule("binary-formatter", "insecure_deserialization", "high", "high",
              r"\bBinaryFormatter\b", "BinaryFormatter deserialises arbitrary types"),
    RegexRule("html-raw", "xss", "high", "medium", r"Html\.Raw\(\s*(?P<arg>)",
              "Html.Raw prints a non-constant value unescaped"),
)  # fmt: skip
