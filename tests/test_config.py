"""config.toml: discovery order, schema checks that name the key, precedence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgproc.config import Config, find_config, load_config, parse_config
from imgproc.errors import ConfigError

REPO_CONFIG = Path(__file__).parents[1] / "config.toml"


def test_the_documented_example_holds_the_defaults() -> None:
    config = load_config(REPO_CONFIG)
    assert config.runtime == Config().runtime
    assert config.output == Config().output
    assert config.logging == Config().logging
    assert config.daemon == Config().daemon and config.watch == ()


@pytest.mark.parametrize(("data", "key", "reason"), [
    ({"runtim": {}}, "runtim", "unknown section"),
    ({"runtime": {"tile": 5}}, "runtime.tile", "unknown key"),
    ({"runtime": {"tile_size": "512"}}, "runtime.tile_size", "expected int, got str"),
    ({"runtime": {"workers": True}}, "runtime.workers", "expected int, got bool"),
    ({"runtime": {"provider": "tpu"}}, "runtime.provider", "not one of auto, cuda, cpu"),
    ({"runtime": {"workers": 0}}, "runtime.workers", "at least 1"),
    ({"runtime": {"tile_size": 64, "tile_overlap": 32}}, "runtime.tile_overlap", "half"),
    ({"output": {"jpeg_quality": 101}}, "output.jpeg_quality", "1-100"),
    ({"logging": {"format": "xml"}}, "logging.format", "not one of"),
    ({"plugins": {"sepia": 3}}, "plugins.sepia", "expected a table"),
    ({"runtime": 3}, "runtime", "expected a table"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_config_names_the_key(data: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"config key '{key}'.*{reason}"):
        parse_config(data)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[runtime\n")
    with pytest.raises(ConfigError, match=f"in {path}: not valid TOML"):
        load_config(path)


def test_plugin_defaults_are_kept_for_the_processor() -> None:
    config = parse_config({"plugins": {"sepia": {"strength": 0.3}}})
    assert config.plugins["sepia"] == {"strength": 0.3}


def test_float_keys_accept_integers_and_ints_refuse_floats() -> None:
    with pytest.raises(ConfigError, match="runtime.tile_size"):
        parse_config({"runtime": {"tile_size": 512.0}})


@pytest.mark.parametrize("source", ["explicit", "env", "cwd", "none"])
def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    explicit, env, cwd = (tmp_path / n for n in ("explicit.toml", "env.toml", "config.toml"))
    for path in (explicit, env, cwd):
        path.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGPROC_CONFIG", raising=False)
    if source != "explicit":
        explicit = None  # type: ignore[assignment]
    if source in ("explicit", "env"):
        monkeypatch.setenv("IMGPROC_CONFIG", str(env))
    if source == "none":
        cwd.unlink()
    expected = {"explicit": tmp_path / "explicit.toml", "env": env, "cwd": cwd,
                "none": None}[source]
    assert find_config(explicit) == expected


def test_replace_keeps_config_values_the_cli_did_not_give() -> None:
    config = parse_config({"runtime": {"workers": 3, "provider": "cpu"}})
    updated = config.replace("runtime", provider=None, workers=2)
    assert (updated.runtime.workers, updated.runtime.provider) == (2, "cpu")


def test_watch_rules_parse_with_paths_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[[watch]]\ninput = "in"\noutput = "/abs/out"\nplugins = ["a", "b"]\n'
                    'after = "move"\n[watch.options.a]\nlevel = 2\n'
                    '[[watch]]\ninput = "in2"\noutput = "out2"\nplugin = "c"\npoll = true\n')
    first, second = load_config(path).watch
    assert (first.input, first.output, first.plugins) == (tmp_path / "in", Path("/abs/out"),
                                                          ("a", "b"))
    assert first.after == "move" and first.options == {"a": {"level": 2}}
    assert first.done_dir() == tmp_path / "in" / ".imgproc-done"
    assert second.plugins == ("c",) and second.poll


@pytest.mark.parametrize(("rule", "key", "reason"), [
    ({"output": "o", "plugin": "p"}, "watch[0].input", "is required"),
    ({"input": "i", "output": "o"}, "watch[0].plugins", "name a plugin"),
    ({"input": "i", "output": "o", "plugin": "p", "plugins": ["q"]}, "watch[0].plugins",
     "not both"),
    ({"input": "i", "output": "o", "plugin": "p", "after": "shred"}, "watch[0].after",
     "not one of keep, move, delete"),
    ({"input": "i", "output": "o", "plugin": "p", "recursive": "yes"}, "watch[0].recursive",
     "wrong type str"),
    ({"input": "i", "output": "o", "plugin": "p", "colour": 1}, "watch[0].colour",
     "unknown key"),
], ids=["no-input", "no-plugin", "both", "after", "type", "unknown"])
def test_bad_watch_rules_name_the_key(rule: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"'{re.escape(key)}'.*{reason}"):
        parse_config({"watch": [rule]})


def test_relative_journal_path_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[daemon]\njournal = "state/j.sqlite"\n')
    assert load_config(tmp_path / "config.toml").journal_path() == tmp_path / "state/j.sqlite"
    assert Config().journal_path().name == "journal.sqlite"
