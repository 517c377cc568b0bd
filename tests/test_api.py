"""The public plugin API: what `imgproc` exports, its version check, and that the built-in
plugins and the example package need nothing else."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import imgproc
from imgproc.api_version import API_VERSION, api_mismatch
from imgproc.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = {"imgproc", "imgproc.testing"}

OLD_PLUGIN = '''
from imgproc import Processor, hookimpl

IMGPROC_API_VERSION = "{version}"


@hookimpl
def imgproc_processors():
    return [Processor("copy", "Copy the image.", lambda images, **kw: images[0])]
'''


@pytest.mark.parametrize(("declared", "provided", "expected"), [
    ("1.0", "1.0.0", None),
    ("1.0", "1.3.2", None),
    ("1.3.1", "1.3.0", None),
    (None, "1.0.0", None),
    ("1.4", "1.3.0", "older"),
    ("2.0", "1.3.0", "different major"),
    ("0.9", "1.0.0", "different major"),
    ("one", "1.0.0", "expected 'MAJOR.MINOR'"),
], ids=["same", "newer-host", "patch-ignored", "undeclared", "older-host", "major-up",
        "major-down", "malformed"])
def test_api_mismatch_follows_semantic_versioning(declared: str | None, provided: str,
                                                  expected: str | None) -> None:
    reason = api_mismatch(declared, provided)
    assert reason is None if expected is None else expected in reason


def test_the_api_version_is_the_exported_one() -> None:
    assert imgproc.API_VERSION == API_VERSION
    assert f"## {API_VERSION}" in (ROOT / "CHANGELOG.md").read_text()


def _write_plugin(folder: Path, version: str) -> Path:
    folder.mkdir()
    (folder / "old.py").write_text(OLD_PLUGIN.format(version=version))
    return folder


def test_plugins_warns_about_a_plugin_for_another_api(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _write_plugin(tmp_path / "local", "2.0")
    text = run_cli("--plugins-dir", str(folder), "plugins").stdout
    assert "warning: written for imgproc plugin API 2.0" in text
    data = json.loads(run_cli("--plugins-dir", str(folder), "plugins", "--json").stdout)
    copy = next(p for p in data["processors"] if p["name"] == "copy")
    assert copy["api_version"] == "2.0" and "different major" in copy["api_warning"]
    assert data["api_version"] == API_VERSION


def test_plugins_is_quiet_about_a_compatible_plugin(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _write_plugin(tmp_path / "local", "1.0")
    data = json.loads(run_cli("--plugins-dir", str(folder), "plugins", "--json").stdout)
    copy = next(p for p in data["processors"] if p["name"] == "copy")
    assert (copy["api_version"], copy["api_warning"]) == ("1.0", None)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _private(module: str) -> bool:
    top = module.split(".")[0]
    return top == "exporters" or (top == "imgproc" and module not in PUBLIC_MODULES)


PLUGIN_SOURCES = sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")])


@pytest.mark.parametrize("path", PLUGIN_SOURCES,
                         ids=[str(p.relative_to(ROOT)) for p in PLUGIN_SOURCES])
def test_plugins_import_only_the_public_api(path: Path) -> None:
    private = [m for m in _imports(path) if _private(m)]
    assert not private, f"{path.relative_to(ROOT)} imports {private}: use what `imgproc` exports"


@pytest.mark.parametrize(("page", "form"), [("docs/plugins.md", "`{}"), ("CHANGELOG.md", "`{}`")],
                         ids=["docs", "changelog"])
def test_every_public_name_is_documented_and_in_the_changelog(page: str, form: str) -> None:
    text = (ROOT / page).read_text()
    missing = [name for name in imgproc.__all__ if form.format(name) not in text]
    assert not missing, f"{page} does not name {missing}"


def test_open_session_runs_a_model_outside_any_batch(halve_model: imgproc.ModelFile) -> None:
    session = imgproc.open_session(halve_model.path.read_bytes(), name="halve", provider="cpu")
    image = np.full((1, 3, 2, 5), 0.8, dtype=np.float32)
    (out,) = session.run({"image": image})
    assert session.provider == "CPUExecutionProvider"
    np.testing.assert_allclose(out, 0.4)
