"""Arrows point one way: the layering of the three packages, checked on their imports.

- ``detectors/`` and ``playbooks/`` never import ``daemon``;
- a detector family (``detectors/<family>/``) never imports another family
  (shared code lives in ``detectors/*.py``);
- production modules (``daemon`` outside ``daemon/lab``, ``detectors``,
  ``playbooks``) never import the lab, except the CLI (``daemon/cli.py``,
  ``daemon/cli_lab.py``) inside the functions of its lab verbs (lazily, after
  checking the extra is installed).

Imports are read with :mod:`ast` (module level, inside functions, under
``TYPE_CHECKING``, relative ones resolved), so the check needs no import of
the code it checks.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("daemon", "detectors", "playbooks")
LAB = "daemon.lab"
#: The production modules allowed to import the lab, and only inside functions:
#: the CLI and its lab verbs.
LAB_LAUNCHERS = ("daemon.cli", "daemon.cli_lab")


@dataclass(frozen=True)
class Import:
    target: str      # the module the statement loads
    line: int
    in_function: bool


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> list[Import]:
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:  # ``from m import n``: m.n if n is a module, else m
                    sub = f"{base}.{alias.name}"
                    found.append(Import(sub if _is_module(root, sub) else base, child.lineno,
                                        in_function))
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                              | ast.Lambda)
            visit(child, inner)

    visit(tree, False)
    return found


def _is_module(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _family(root: Path, module: str) -> str | None:
    """``detectors.<family>`` when ``module`` is in (or is) a detector family subpackage."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "detectors" and (root / "detectors" / parts[1]).is_dir():
        return "detectors." + parts[1]
    return None


def layering_violations(root: Path) -> list[str]:
    """One line per import that breaks the layering, ``path:line: what``."""
    problems: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(root, path)
            where = path.relative_to(root).as_posix()
            production = not _within(module, LAB)
            family = _family(root, module)
            for imp in imports_of(root, path):
                if package in ("detectors", "playbooks") and _within(imp.target, "daemon"):
                    problems.append(f"{where}:{imp.line}: {package}/ imports {imp.target} "
                                    "(only daemon/ may depend on the daemon)")
                other = _family(root, imp.target)
                if family and other and other != family:
                    problems.append(f"{where}:{imp.line}: family {family} imports {imp.target} "
                                    "(families share code through detectors/*.py only)")
                if production and _within(imp.target, LAB) and not (
                        module in LAB_LAUNCHERS and imp.in_function):
                    problems.append(f"{where}:{imp.line}: production module {module} imports "
                                    f"{imp.target} (the lab is an optional extra)")
    return sorted(set(problems))


def test_the_packages_keep_their_layers() -> None:
    assert layering_violations(REPO) == []


def test_the_check_sees_the_real_packages() -> None:
    """Guards the guard: it walks real files, and finds the lab verbs' lazy imports."""
    cli = imports_of(REPO, REPO / "daemon" / "cli_lab.py")
    lazy = [i for i in cli if _within(i.target, LAB)]
    assert lazy and all(i.in_function for i in lazy)
    assert _family(REPO, "detectors.abuse.extraction") == "detectors.abuse"
    assert _family(REPO, "detectors.events") is None


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()


_ALLOWED = {
    "daemon/runtime.py": "from detectors.pipeline import Pipeline\nimport playbooks.engine\n",
    "daemon/cli.py": """\
        import argparse

        def cmd_demo(args):
            from daemon.lab.demo import run_demo
            return run_demo()
        """,
    "daemon/lab/demo.py": "from daemon.runtime import Daemon\nfrom daemon.lab import broker\n",
    "daemon/lab/broker.py": "",
    "detectors/pipeline.py": "from detectors.abuse.extraction import X\nfrom .events import E\n",
    "detectors/events.py": "",
    "detectors/abuse/extraction.py": "from detectors.events import E\nfrom .common import C\n",
    "detectors/abuse/common.py": "from ..events import E\n",
    "detectors/access/travel.py": "from detectors import events\n",
    "playbooks/engine.py": "from detectors.findings import Finding\n",
}


def test_allowed_arrows_pass(tmp_path: Path) -> None:
    _tree(tmp_path, _ALLOWED)
    assert layering_violations(tmp_path) == []


def test_each_forbidden_arrow_is_reported_with_file_and_line(tmp_path: Path) -> None:
    _tree(tmp_path, {
        **_ALLOWED,
        "daemon/cli.py": "from daemon.lab import demo\n",                 # lab at module level
        "daemon/runtime.py": "import os\n\n\ndef f():\n    import daemon.lab.broker\n",
        "detectors/access/travel.py": "from typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n"
                                      "    from daemon.settings import Settings\n",
        "detectors/access/rates.py": "from ..abuse.common import C\n",   # relative, cross-family
        "detectors/abuse/common.py": "import detectors.access\n",
        "playbooks/engine.py": "from daemon import metrics\n",
    })
    assert layering_violations(tmp_path) == [
        "daemon/cli.py:1: production module daemon.cli imports daemon.lab.demo "
        "(the lab is an optional extra)",
        "daemon/runtime.py:5: production module daemon.runtime imports daemon.lab.broker "
        "(the lab is an optional extra)",
        "detectors/abuse/common.py:1: family detectors.abuse imports detectors.access "
        "(families share code through detectors/*.py only)",
        "detectors/access/rates.py:1: family detectors.access imports detectors.abuse.common "
        "(families share code through detectors/*.py only)",
        "detectors/access/travel.py:3: detectors/ imports daemon.settings "
        "(only daemon/ may depend on the daemon)",
        "playbooks/engine.py:1: playbooks/ imports daemon (only daemon/ may depend on the daemon)",
    ]
