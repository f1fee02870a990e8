"""The layering rule that import-linter cannot see: no function-local imports outside the CLI.

`make test` runs import-linter (pyproject's ``[tool.importlinter]``) over every import, function-local ones
included, so a lazy import of a higher layer is caught there. This test adds the rest of the rule: outside
``t5kit/cli`` (where a command may import lazily to keep start-up fast) a function-local import is allowed
only for an optional third-party dependency (``# optional: <extra>`` on its line), or for a third-party module
deferred for start-up time with the measured reason (``# lazy: <figure>``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import t5kit

SOURCE = Path(t5kit.__file__).resolve().parent


def _local_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, "." * inner.level + (inner.module or "")))
    return found


# Where a module is imported by name at run time (invisible to import-linter), and why. Nothing else may.
DYNAMIC_IMPORTS = {
    "generate/__init__.py": "names that moved up to t5kit.pipeline in #16, resolved on first use (a cycle otherwise)",
    "checkpoint/__init__.py": "load_model / save_model / hf_state_dict moved up to t5kit.model.loading in #16",
    "metrics.py": "the optional third-party metric packages (sacrebleu, rouge-score), probed by name",
    "data/corpora/ddtp.py": "the optional lz4 module (apt's index compression), probed by name; else apt-helper",
}


def test_no_other_dynamic_imports_of_t5kit_modules():
    found = set()
    for path in sorted(SOURCE.rglob("*.py")):
        relative = str(path.relative_to(SOURCE))
        if relative.startswith("cli/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
                found.add(relative)
    assert found == set(DYNAMIC_IMPORTS), found


def test_function_local_imports_are_optional_dependencies_with_a_comment():
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE)
        if relative.parts[0] == "cli":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno, module in _local_imports(path):
            line = lines[lineno - 1]
            if module.startswith(("t5kit", ".")) or not ("# optional" in line or "# lazy:" in line):
                offenders.append(f"{relative}:{lineno}: {line.strip()}")
    assert not offenders, "function-local imports outside cli/ (import at module level, or mark an optional " \
                          "third-party dependency with '# optional: <why>'):\n" + "\n".join(offenders)
