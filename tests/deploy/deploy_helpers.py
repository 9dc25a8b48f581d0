"""Helpers for the deployment-file tests: paths, tool lookup, Helm rendering.

Everything here runs offline. A tool that is missing makes its tests skip
with the reason (and the install command), never pass.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "mlwatchd"
HERE = Path(__file__).resolve().parent


def find_tool(name: str) -> str | None:
    """An executable from this interpreter's environment first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    return shutil.which(name)


def require_tool(name: str, install: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found (install: {install})")
    return path


def load_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((HERE / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def render(values: dict[str, Any] | None = None, *, release: str = "mlwatchd",
           namespace: str = "security") -> list[dict[str, Any]]:
    """Render the chart with Helm's own engine (helm-python-sdk) into objects."""
    helm = pytest.importorskip(
        "helm_python",
        reason="helm-python-sdk not installed (pip install helm-python-sdk); "
               "no helm binary is available to render the chart otherwise",
    )
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name=release, namespace=namespace)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
