"""`--engine dask` against real clusters: a LocalCluster the run starts itself, and a scheduler
and workers started as subprocesses the way a user starts them (`dask scheduler`,
`dask worker`). Every test checks that no process it started is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import Result
from distributed import Client

from imgproc.images import TEMP_SUFFIX

from .conftest import LOCAL_PLUGINS, read_rgb

ENGINE_PLUGINS = Path(__file__).parent / "engine_plugins"
Run = Callable[..., Result]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: set[int], timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def _children() -> set[int]:
    # multiprocessing's resource tracker is one helper per interpreter, started with the first
    # spawned process and reused until this process exits: not a cluster process.
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())}


@pytest.fixture
def no_leftover_children() -> Iterator[None]:
    """Fail the test if a process it started (a local cluster's workers) outlives it."""
    before = _children()
    yield
    assert not _wait_gone(_children() - before), "processes left behind"


DASK_SETTINGS = """
distributed:
  scheduler:
    worker-saturation: 1.0
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
  worker:
    profile:
      enabled: false
"""


@dataclass
class Cluster:
    """A `dask scheduler` and `dask worker` processes started as a user would."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def worker_pids(self) -> list[int]:
        """Return the worker processes (children of each `dask worker` nanny)."""
        return [c.pid for w in self.workers for c in psutil.Process(w.pid).children()
                if "spawn_main" in " ".join(c.cmdline())]

    def pids(self) -> set[int]:
        """Return every process of the cluster, nannies' children included."""
        found = set()
        for proc in (self.scheduler, *self.workers):
            found.add(proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                found |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        return found


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Return a function starting a scheduler and one single-threaded worker per env given
    (an env adds to this process's); everything is stopped and checked gone at teardown."""
    clusters: list[Cluster] = []

    def start(*worker_envs: dict[str, str], allowed_failures: int = 1) -> Cluster:
        settings = tmp_path / "dask.yaml"  # the settings docs/engines.md recommends
        settings.write_text(DASK_SETTINGS)
        env = {**os.environ, "DASK_CONFIG": str(settings),
               "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
        file = tmp_path / f"scheduler-{len(clusters)}.json"
        scheduler = _spawn(["scheduler", "--host", "127.0.0.1", "--port", "0",
                            "--no-dashboard", "--scheduler-file", str(file)], env)
        cluster = Cluster("", scheduler)
        clusters.append(cluster)
        _wait_for(file.exists, 30, "the scheduler did not start")
        cluster.address = json.loads(file.read_text())["address"]
        for extra in worker_envs:
            cluster.workers.append(_spawn(
                ["worker", cluster.address, "--nthreads", "1", "--nworkers", "1",
                 "--host", "127.0.0.1", "--no-dashboard"], {**env, **extra}))
        with Client(cluster.address, timeout=30) as client:
            client.wait_for_workers(len(worker_envs), timeout=30)
        return cluster

    yield start
    for cluster in clusters:
        pids = cluster.pids()
        for proc in (*cluster.workers, cluster.scheduler):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (*cluster.workers, cluster.scheduler):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert not _wait_gone(pids), "cluster processes left behind"


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask", *args], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _images(folder: Path, count: int, *, widths: tuple[int, ...] = (40,)) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        pixels = np.random.default_rng(n).integers(0, 256, (24, widths[n % len(widths)], 3))
        paths.append(folder / f"{n:02d}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    return paths


def _same_pixels(a: Path, b: Path) -> bool:
    return all(np.array_equal(read_rgb(a / p.name), read_rgb(b / p.name))
               for p in sorted(a.iterdir()))


def _leftover_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


# -- a local cluster started by the run ------------------------------------------------------

def test_a_local_cluster_run_matches_the_local_engine(run_cli: Run, tmp_path: Path,
                                                      no_leftover_children: None) -> None:
    _images(tmp_path / "in", 4)
    local = run_cli("run", "-p", "identity", "-O", "scale=2", "in", "-o", "local", "--json")
    remote = run_cli("run", "-p", "identity", "-O", "scale=2", "in", "-o", "dask", "--json",
                     "--engine", "dask")
    assert remote.exit_code == 0, remote.output
    summary = json.loads(remote.stdout)
    assert (summary["done"], summary["failed"]) == (4, 0)
    assert [o["output"] for o in summary["outcomes"]] == [
        o["output"].replace("local", "dask") for o in json.loads(local.stdout)["outcomes"]]
    assert _same_pixels(tmp_path / "local", tmp_path / "dask")


@pytest.mark.slow
@pytest.mark.parametrize("options", [("superres", "-O", "model=fast", "-O", "scale=2"),
                                     ("colorize",)], ids=["superres-fast-x2", "colorize"])
def test_model_outputs_are_pixel_identical_on_a_local_cluster(
        run_cli: Run, tmp_path: Path, options: tuple[str, ...],
        no_leftover_children: None) -> None:
    _images(tmp_path / "in", 3, widths=(40, 33, 57))
    plugin, *rest = options
    assert run_cli("run", "-p", plugin, *rest, "in", "-o", "local").exit_code == 0
    result = run_cli("run", "-p", plugin, *rest, "in", "-o", "dask", "--engine", "dask")
    assert result.exit_code == 0, result.output
    assert _same_pixels(tmp_path / "local", tmp_path / "dask")


# -- a cluster started as a user starts one --------------------------------------------------

WITH_PLUGINS = {"IMGPROC_PLUGINS_DIR": str(ENGINE_PLUGINS)}


def _run_cli_process(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "IMGPROC_CONFIG"}
    return subprocess.Popen([sys.executable, "-m", "imgproc.cli", "--plugins-dir",
                             str(ENGINE_PLUGINS), "run", *args, "--json"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing(start_cluster: Callable[..., Cluster],
                                                 tmp_path: Path) -> None:
    cluster = start_cluster(WITH_PLUGINS, WITH_PLUGINS)
    inputs = _images(tmp_path / "in", 10)
    run = _run_cli_process("-p", "nap", "-O", "seconds=0.4", "in", "-o", "out", "--address",
                           cluster.address, cwd=tmp_path)
    try:
        _wait_for(lambda: len(list((tmp_path / "out").glob("*.png"))) >= 2, 60, "no output")
    except TimeoutError:
        run.kill()
        pytest.fail(f"no output: {run.communicate()[1][-3000:]}")
    victim = cluster.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["done"] == 10
    assert not _alive(victim)
    _wait_for(lambda: len(cluster.worker_pids()) == 2, 30, "the nanny did not restart it")
    for path in inputs:
        assert np.allclose(read_rgb(tmp_path / "out" / path.name), 1 - read_rgb(path))
    assert not _leftover_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_an_image_that_kills_every_worker_fails_alone(start_cluster: Callable[..., Cluster],
                                                      tmp_path: Path) -> None:
    cluster = start_cluster(WITH_PLUGINS, WITH_PLUGINS, allowed_failures=0)
    _images(tmp_path / "in", 6, widths=(40, 40, 37))  # 02.png and 05.png are 37 wide
    run = _run_cli_process("-p", "crash", "-O", "width=37", "in", "-o", "out", "--address",
                           cluster.address, cwd=tmp_path)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr[-3000:]
    outcomes = {Path(o["inputs"][0]).name: o for o in json.loads(stdout)["outcomes"]}
    for name in ("02.png", "05.png"):
        assert outcomes[name]["status"] == "failed"
        assert outcomes[name]["reason"].startswith("worker lost: 2 workers died running it "
                                                   "in 2 tasks")
    assert sorted(n for n, o in outcomes.items() if o["status"] == "done") == [
        "00.png", "01.png", "03.png", "04.png"]
    assert not _leftover_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_a_worker_without_the_plugin_is_refused_up_front(
        start_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    cluster = start_cluster(WITH_PLUGINS, {"IMGPROC_PLUGINS_DIR": str(LOCAL_PLUGINS)})
    _images(tmp_path / "in", 3)
    run = _run_cli_process("-p", "nap", "in", "-o", "out", "--address", cluster.address,
                           cwd=tmp_path)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 2
    message = [line for line in stderr.splitlines() if "Error:" in line]
    assert len(message) == 1, stderr[-3000:]
    assert "dask worker tcp://127.0.0.1:" in message[0]
    assert "processor nap is missing here, plugin local:crashers - on the client" in message[0]
    assert list((tmp_path / "out").iterdir()) == []  # nothing written, the probe removed


@pytest.mark.slow
def test_skip_existing_resumes_a_cluster_batch(start_cluster: Callable[..., Cluster],
                                               tmp_path: Path) -> None:
    cluster = start_cluster(WITH_PLUGINS)
    _images(tmp_path / "in", 4)
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / f".01.png.abc123{TEMP_SUFFIX}"  # a crashed client's leftover
    stale.write_bytes(b"half")
    first = _run_cli_process("-p", "nap", "in/00.png", "in/01.png", "-o", "out",
                             "--address", cluster.address, cwd=tmp_path)
    assert first.wait(timeout=120) == 0
    again = _run_cli_process("-p", "nap", "in", "-o", "out", "--skip-existing",
                             "--address", cluster.address, cwd=tmp_path)
    stdout, _ = again.communicate(timeout=120)
    assert (json.loads(stdout)["done"], json.loads(stdout)["skipped"]) == (2, 2)
    assert not stale.exists()


@pytest.mark.slow
def test_the_watch_daemon_hands_its_images_to_a_cluster(tmp_path: Path) -> None:
    inbox, outbox, log = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "daemon.log"
    inbox.mkdir()
    (tmp_path / "config.toml").write_text(
        '[engine]\nworkers = 2\n\n[daemon]\njournal = "journal.sqlite"\n\n'
        '[[watch]]\ninput = "inbox"\noutput = "outbox"\nplugin = "nap"\nengine = "dask"\n'
        '[watch.options.nap]\nseconds = 0.1\nnote_pid = true\n')
    env = {k: v for k, v in os.environ.items() if k != "IMGPROC_CONFIG"}
    with log.open("w") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "imgproc.cli", "--config", str(tmp_path / "config.toml"),
             "--plugins-dir", str(ENGINE_PLUGINS), "--log-json", "watch", "--workers", "2"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for(lambda: "daemon starting" in log.read_text() or daemon.poll() is not None,
                  60, "the daemon did not start")
        cluster = {c.pid for c in psutil.Process(daemon.pid).children(recursive=True)}
        inputs = _images(inbox, 4)
        _wait_for(lambda: len(list(outbox.glob("*.pid.txt"))) == 4, 60, "no outputs")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    assert daemon.returncode == 0, log.read_text()[-3000:]
    assert not _wait_gone(cluster), "the daemon left cluster processes behind"
    for path in inputs:
        assert np.allclose(read_rgb(outbox / path.name), 1 - read_rgb(path))
    ran_in = {int((outbox / f"{p.stem}.pid.txt").read_text()) for p in inputs}
    assert ran_in and ran_in <= cluster - {daemon.pid}  # on the cluster's workers only
