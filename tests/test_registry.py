"""Discovery through the real `imgproc` entry-point group; broken plugins are set aside."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgproc.errors import PluginNotFound
from imgproc.registry import load_registry

from .conftest import LOCAL_PLUGINS


def _install_fake_distribution(site: Path, name: str, module_source: str) -> None:
    """Write a real installed distribution (dist-info + module) into a sys.path folder."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[imgproc]\n{name} = {name}_mod\n")
    (site / f"{name}_mod.py").write_text(textwrap.dedent(module_source))


BROKEN = {
    "import-error": ("import does_not_exist_anywhere\n", "could not load: ModuleNotFoundError"),
    "hook-raises": ("""
        from imgproc import hookimpl
        @hookimpl
        def imgproc_processors():
            raise ValueError("bad plugin")
        """, "imgproc_processors\\(\\) raised ValueError: bad plugin"),
    "misspelled-hook": ("""
        from imgproc import hookimpl
        @hookimpl
        def imgproc_processor():
            return []
        """, "invalid hook"),
    "not-a-processor": ("""
        from imgproc import hookimpl
        @hookimpl
        def imgproc_processors():
            return ["sepia"]
        """, "returned str, not an imgproc Processor"),
    "undecorated-hook": ("""
        def imgproc_processors():
            return []
        """, "imgproc_processors is not decorated with @imgproc.hookimpl"),
    "bad-declaration": ("""
        from imgproc import Processor, hookimpl
        @hookimpl
        def imgproc_processors():
            return [Processor("Bad Name", "x", lambda images, **kw: images[0])]
        """, "raised ValueError: processor name 'Bad Name'"),
}


def test_example_plugin_is_discovered_through_its_entry_point() -> None:
    registry = load_registry()
    sepia = registry.get("sepia")
    assert (sepia.distribution, sepia.version, sepia.plugin) == ("imgproc-sepia", "1.0.0", "sepia")
    assert "autocontrast" in registry.processors


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_broken_plugin_is_set_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      case: str) -> None:
    source, reason = BROKEN[case]
    name = "broken_" + case.replace("-", "_")
    _install_fake_distribution(tmp_path, name, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    assert "sepia" in registry.processors  # the others still load
    [failure] = registry.failures
    assert failure.plugin == name and failure.distribution == name
    assert __import__("re").search(reason, failure.reason)


def test_duplicate_processor_names_keep_the_first_on_sys_path(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "copycat", """
        import numpy as np
        from imgproc import Processor, hookimpl
        @hookimpl
        def imgproc_processors():
            return [Processor("sepia", "Not the real one.", lambda images, **kw: images[0])]
        """)
    monkeypatch.syspath_prepend(str(tmp_path))  # earlier on sys.path, so found first
    registry = load_registry()
    assert registry.get("sepia").distribution == "copycat"
    [failure] = registry.failures
    assert failure.distribution == "imgproc-sepia"
    assert "'sepia' is already provided by plugin 'copycat'" in failure.reason


def test_imgproc_plugins_shows_failures_and_exits_zero(tmp_path: Path) -> None:
    _install_fake_distribution(tmp_path, "broken_cli", "raise SystemError('nope')\n")
    result = subprocess.run([sys.executable, "-m", "imgproc.cli", "plugins"],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(tmp_path), "PATH": ""}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sepia  (imgproc-sepia 1.0.0" in result.stdout
    assert "FAILED broken_cli (broken_cli): could not load: SystemError: nope" in result.stdout
    assert "plugin set aside" in result.stderr  # and a warning in the log


def test_env_var_restricts_which_plugins_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROC_PLUGINS", "nothing-by-this-name")
    assert load_registry().processors == {}


def test_plugins_dir_loads_local_modules() -> None:
    registry = load_registry(plugins_dir=LOCAL_PLUGINS)
    identity = registry.get("identity")
    assert identity.plugin == "local:testing_processors"
    assert identity.distribution == str(LOCAL_PLUGINS)


def test_unknown_processor_lists_what_exists() -> None:
    with pytest.raises(PluginNotFound, match=r"'nope' \(available: autocontrast, .*sepia"):
        load_registry().get("nope")
