"""The engine seam without a cluster: registration, the picklable description, the worker's
up-front checks run in this process, temporary-file sweeping and the CLI's usage errors."""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from imgproc import dask_engine, hookimpl
from imgproc.batch import Job, Outcome, Plan, Step, run_batch
from imgproc.config import Config, OutputSettings, RuntimeSettings, parse_config
from imgproc.dask_engine import PROBE_PREFIX, check_worker, pipeline
from imgproc.engine import EngineKind, LocalEngine, Work, describe_work, sweep_temporaries
from imgproc.errors import ConfigError
from imgproc.images import TEMP_SUFFIX
from imgproc.registry import Registry, load_registry
from imgproc.runtime import Runtime

from .conftest import LOCAL_PLUGINS

ENGINE_PLUGINS = Path(__file__).parent / "engine_plugins"


@pytest.fixture
def work(registry: Registry) -> Work:
    """Return the description of running the tests' identity processor at scale 2."""
    steps = [Step(registry.get("identity").processor, {"scale": 2})]
    return describe_work(steps, registry, Config(), plugins_dir=LOCAL_PLUGINS)


@pytest.fixture(autouse=True)
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each test an empty per-process pipeline cache, as a new worker process has."""
    monkeypatch.setattr(dask_engine, "_prepared", OrderedDict())


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process look like a worker started with the tests' plugins directory."""
    monkeypatch.setenv("IMGPROC_PLUGINS_DIR", str(LOCAL_PLUGINS))


def test_the_host_registers_its_engines_through_the_hook() -> None:
    registry = load_registry(only=[])
    assert {"local", "dask"} <= set(registry.engines)
    assert all(isinstance(k, EngineKind) for k in registry.engines.values())


class _ThirdParty:
    """A plugin shipping an engine (as imgproc-ray would), and one taking a taken name."""

    @staticmethod
    @hookimpl
    def imgproc_engines() -> list[EngineKind]:
        return [EngineKind("ray", "Ray.", lambda *a, **k: None),  # type: ignore[arg-type]
                EngineKind("dask", "Another dask.", lambda *a, **k: None)]  # type: ignore[arg-type]


def test_a_plugin_adds_an_engine_and_cannot_replace_one() -> None:
    registry = load_registry(only=[], extra_plugins=[("ray-plugin", _ThirdParty())])
    assert "ray" in registry.engines
    assert registry.engines["dask"].summary != "Another dask."
    assert any("engine 'dask'" in f.reason for f in registry.failures)


def test_work_is_small_names_only_and_picklable(work: Work) -> None:
    data = pickle.dumps(work)
    assert len(data) < 2048
    assert b"imgproc_local_" not in data and b"Processor" not in data  # no code, no objects
    assert pickle.loads(data) == work
    assert work.fingerprint["processor identity"] == "plugin local:testing_processors -"


def test_a_worker_builds_its_pipeline_once(work: Work, worker_env: None) -> None:
    steps, runtime = pipeline(work)
    assert pipeline(work)[1] is runtime  # cached per process
    assert steps[0].processor.name == "identity" and steps[0].options == {"scale": 2}
    other = dataclasses.replace(work, runtime=RuntimeSettings(tile_size=256))
    assert pipeline(other)[1] is not runtime


def _probe(folder: Path, *, content: str | None = None) -> Path:
    probe = folder / f"{PROBE_PREFIX}abc123"
    probe.write_text("abc123" if content is None else content)
    return probe


def test_a_worker_that_matches_reports_nothing(work: Work, worker_env: None,
                                               tmp_path: Path) -> None:
    sample = tmp_path / "in.png"
    sample.write_bytes(b"x")
    assert check_worker(work, _probe(tmp_path), sample) is None


@pytest.mark.parametrize(("change", "message"), [
    ("probe", "does not see the output folder"),
    ("input", "does not see the input"),
    ("model", "model identity/net is missing here, sha256 0123 on the client"),
    ("version", "imgproc is .* here, 9.9 on the client"),
], ids=["probe", "input", "model", "version"])
def test_a_worker_that_differs_is_named_and_refused(work: Work, worker_env: None,
                                                   tmp_path: Path, change: str,
                                                   message: str) -> None:
    sample = tmp_path / "in.png"
    sample.write_bytes(b"x")
    probe = _probe(tmp_path, content="other" if change == "probe" else None)
    if change == "input":
        sample.unlink()
    extra = {"model": {"model identity/net": "sha256 0123"}, "version": {"imgproc": "9.9"}}
    work = dataclasses.replace(work, fingerprint={**work.fingerprint, **extra.get(change, {})})
    reason = check_worker(work, probe, sample)
    assert reason is not None and "\n" not in reason
    assert re.search(message, reason), reason


def test_a_worker_without_the_plugin_says_so(work: Work, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.delenv("IMGPROC_PLUGINS_DIR", raising=False)
    sample = tmp_path / "in.png"
    sample.write_bytes(b"x")
    reason = check_worker(work, _probe(tmp_path), sample)
    assert reason == ("processor identity is missing here, plugin local:testing_processors - "
                      "on the client")


def test_sweep_removes_only_the_temporaries_of_these_jobs(tmp_path: Path) -> None:
    ours = tmp_path / f".a.png.k3j_x9{TEMP_SUFFIX}"
    theirs = tmp_path / f".b.png.zz1{TEMP_SUFFIX}"
    for path in (ours, theirs, tmp_path / "a.png"):
        path.write_bytes(b"x")
    jobs = [Job((tmp_path / "in.png",), tmp_path / "a.png"),
            Job((tmp_path / "in2.png",), tmp_path / "missing" / "c.png")]
    assert sweep_temporaries(jobs) == 1
    assert not ours.exists() and theirs.exists() and (tmp_path / "a.png").exists()


def test_run_batch_keeps_input_order_whatever_order_an_engine_finishes(
        registry: Registry, tmp_path: Path, write_image: Callable[..., Path]) -> None:
    jobs = [Job((write_image(tmp_path / f"{n}.png"),), tmp_path / "out" / f"{n}.png")
            for n in range(4)]

    class Backwards(LocalEngine):
        def map(self, todo: Any) -> Any:
            return reversed(list(super().map(todo)))

    steps = [Step(registry.get("identity").processor, {"scale": 1})]
    seen: list[Outcome] = []
    with Backwards(steps, Runtime(), OutputSettings()) as engine:
        summary = run_batch(Plan(jobs), steps, Runtime(), OutputSettings(), engine=engine,
                            progress=seen.append)
    assert [o.output for o in summary.outcomes] == [j.output for j in jobs]
    assert [o.output for o in seen] == [j.output for j in reversed(jobs)]


@pytest.mark.parametrize(("data", "key"), [
    ({"engine": {"workers": -1}}, "engine.workers"),
    ({"engine": {"threads_per_worker": 0}}, "engine.threads_per_worker"),
    ({"engine": {"kind": ""}}, "engine.kind"),
    ({"engine": {"adress": "x"}}, "engine.adress"),
], ids=["workers", "threads", "kind", "typo"])
def test_bad_engine_config_names_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        parse_config(data)


Run = Callable[..., Result]


@pytest.mark.parametrize(("args", "message"), [
    (("--engine", "spark"), "no engine 'spark' (available: dask, local)"),
    (("--engine", "local", "--address", "tcp://127.0.0.1:1"), "use it with --engine dask"),
    (("--address", "tcp://127.0.0.1:1"), "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
    (("--engine", "dask"), "cannot reach the Dask scheduler at tcp://127.0.0.1:2"),
], ids=["unknown", "local-with-address", "unreachable", "from-the-environment"])
def test_engine_usage_errors_exit_two(run_cli: Run, tmp_path: Path,
                                      write_image: Callable[..., Path], args: tuple[str, ...],
                                      message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:2")  # --address beats it
    write_image(tmp_path / "in" / "a.png")
    (tmp_path / "engine.toml").write_text("[engine]\ntimeout = 0.5\n")
    result = run_cli("--config", str(tmp_path / "engine.toml"), "run", "-p", "identity",
                     str(tmp_path / "in"), "-o", str(tmp_path / "out"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out" / "a.png").exists()


class _Recording(LocalEngine):
    """A local engine that records the folders it was asked to check."""

    checked: list[tuple[Path, Path]] = []

    def check(self, output: Path, sample: Path) -> None:
        self.checked.append((output, sample))


class _FakeCluster:
    """A plugin registering the engine `fake` (a stand-in for a cluster engine)."""

    @staticmethod
    @hookimpl
    def imgproc_engines() -> list[EngineKind]:
        def open_fake(work: Work, *, settings: Any, steps: Any, runtime: Runtime) -> _Recording:
            return _Recording(steps, runtime, work.output)

        return [EngineKind("fake", "Records checks.", open_fake)]


def test_watch_rules_get_their_engine_or_the_default(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from imgproc.engine import open_watch_engines
    from imgproc.watch import build_watches

    registry = load_registry(plugins_dir=LOCAL_PLUGINS, extra_plugins=[("fake", _FakeCluster())])
    rules = [{"input": str(tmp_path / name), "output": str(tmp_path / f"{name}-out"),
              "plugin": "identity", **extra}
             for name, extra in (("a", {}), ("b", {"engine": "local"}), ("c", {"engine": "fake"}))]
    config = parse_config({"engine": {"kind": "fake"}, "watch": rules})
    watches = build_watches(config.watch, registry, config.plugins)
    _Recording.checked = []
    with ExitStack() as stack:
        engines = open_watch_engines(registry, config, watches, Runtime(), stack=stack)
    assert sorted(engines) == [0, 2]  # the default for a, none for b (local), its own for c
    assert _Recording.checked == [(tmp_path / "a-out", tmp_path / "a"),
                                  (tmp_path / "c-out", tmp_path / "c")]
