"""Run the benchmarks and write their tables into docs/benchmarks.md.

    python benchmarks/run.py                 # every benchmark
    python benchmarks/run.py host_overhead   # only the named ones

Each benchmark module in this folder has `run() -> str` returning a markdown section; the
section replaces the one between its markers in docs/benchmarks.md, so benchmarks added by
later issues keep their own tables.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BENCHMARKS = ["host_overhead", "watch_latency", "merge", "refit", "superres", "colorize",
              "engines", "serve_load"]
HEADER = """# Benchmarks

Measured with `python benchmarks/run.py` (one command; each section below is rewritten when
its benchmark runs). Figures are from the machine named in each section; the development and
CI machines have 2 CPU cores and no GPU.
"""


def main() -> None:
    """Run the requested benchmarks and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    names = parser.parse_args().names or BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    sys.path.insert(0, str(HERE))
    DOC.parent.mkdir(exist_ok=True)
    for name in names:
        section = importlib.import_module(name).run()
        # read just before writing: a benchmark runs for minutes, and the other sections of
        # the page may have been edited (or rewritten by another run) meanwhile
        text = DOC.read_text() if DOC.exists() else HEADER
        DOC.write_text(_replace(text, name,
                                f"{section.rstrip()}\n\n_Machine: {_machine()}._\n"))
        print(section)


def _replace(text: str, name: str, section: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section}{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return f"{text.rstrip()}\n\n{block}\n"


def _machine() -> str:
    import os

    load = os.getloadavg()[0]  # other work on the machine skews timings: say how much
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} when it started")


if __name__ == "__main__":
    main()
