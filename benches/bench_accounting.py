"""What the record accounting costs collect: this tree against a commit from before it, in fresh
processes, A B A B ... so drift of a shared machine cancels in the pair ratios.

Target (issue 11): collect with its accounting (chunk sequence and slot checks, record checks,
CRC32 re-checked in the second pass, per-file counts) within 5 % of the collect it replaced.
Each side emulates its own copy of the run (the raw format changed between them; the records
are the same), then collects it ``--repeat`` times.

    python benches/bench_accounting.py [--baseline 92184b9] [--requests 64] [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TARGET = 1.05
ROOT = Path(__file__).resolve().parent.parent
#: Where each top folder goes in the import namespace (pyproject's package-dir).
LAYOUT = {"sohuprof": "sohuprof", "collectors": "sohuprof/collectors", "analyzers": "sohuprof/analyzers",
          "dashboards": "sohuprof/dashboards"}


def unpack(rev: str, dest: Path) -> Path:
    """The package as it was at ``rev``, laid out for PYTHONPATH (no install)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *LAYOUT], check=True,
                          capture_output=True).stdout
    src = dest / "src"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(src, filter="data")
    pkg = dest / "pkg"
    for top, target in LAYOUT.items():
        shutil.copytree(src / top, pkg / target, dirs_exist_ok=True)
    return pkg


def python(path: Path | None) -> tuple[list[str], dict[str, str], str | None]:
    """The interpreter command, environment and working directory that import the package from
    ``path`` (an :func:`unpack`ed tree), or this tree's install when None.

    An editable install's import hook (a ``.pth`` processed by ``site``) comes before
    PYTHONPATH, so a PYTHONPATH alone still imports this tree: the other tree runs with ``-S`` (no
    site hooks), its dependencies from site-packages put after it by hand, and away from this
    checkout (``-c`` puts the working directory first on ``sys.path``).
    """
    env = dict(os.environ)
    if path is None:
        return [sys.executable], env, None
    import site

    env["PYTHONPATH"] = os.pathsep.join([str(path), *site.getsitepackages()])
    return [sys.executable, "-S"], env, str(path)


def run(code: str, path: Path | None) -> tuple[float, float]:
    """Wall and CPU seconds of ``python -c code`` (the tree at ``path`` when given)."""
    argv, env, cwd = python(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([*argv, "-c", code], check=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="92184b9", help="a commit from before the accounting")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sohuprof-bench-"))
    try:
        base = unpack(args.baseline, work)
        sides = {"this tree": None, f"baseline {args.baseline}": base}
        for i, path in enumerate(sides.values()):
            run("from sohuprof.emulator import EmulatorConfig, emulate; from sohuprof.hardware import load_hardware;"
                "from sohuprof.models import load_model;"
                f"emulate(EmulatorConfig(model=load_model('llama3-70b'), hardware=load_hardware('sohu'), nodes=2,"
                f" requests={args.requests}), '{work}/run{i}', show_progress=False)", path)
        codes = {name: f"from sohuprof.collectors import collect; collect('{work}/run{i}', '{work}/store{i}', "
                       f"force=True, show_progress=False)" for i, name in enumerate(sides)}
        for name, path in sides.items():   # warm-up: page cache, bytecode
            run(codes[name], path)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for _ in range(args.repeat):
            for name, path in sides.items():
                times[name].append(run(codes[name], path))
        raw_mb = sum(p.stat().st_size for p in (work / "run0").rglob("*.strace")) / 1e6
        print(f"collect of a {raw_mb:.0f} MB raw run (llama3-70b, 2 nodes, {args.requests} requests), "
              f"{args.repeat} runs each, fresh processes")
        for name, t in times.items():
            print(f"  {name:<22} wall {median([w for w, _ in t]):6.3f} s   cpu {median([c for _, c in t]):6.3f} s")
        a, b = times["this tree"], times[f"baseline {args.baseline}"]
        wall = median([x[0] / y[0] for x, y in zip(a, b)])
        cpu = median([x[1] / y[1] for x, y in zip(a, b)])
        print(f"ratio this / baseline (median of pairs): wall {wall:.3f}x, cpu {cpu:.3f}x "
              f"(target <= {TARGET}x) {'OK' if wall <= TARGET else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
