"""Process exit: `python run.py` with and without `gc.freeze()` before the interpreter exits.

A run's last log line comes seconds before its process ends: the interpreter's exit
collects cycles over the whole heap (torch, timm, mlflow, pandas objects) once more.
run.py freezes the heap when the job is over. This script times `python run.py
debug=fast` (one epoch of the default data and model, a new MLflow store) in fresh
processes, taking turns round by round:

* freeze: run.py as it is;
* plain: the same entry point without the `gc.freeze()` call (a copy of run.py written
  to a temporary folder, beside a link to conf/).

It prints the median wall time of each, their difference and ratio, and the median time
from the run's last log line to the end of the process. Run from the repository root::

    .venv/bin/python benchmarks/exit_time.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench_results import quick, record

REPO = Path(__file__).resolve().parent.parent
FREEZE_CALL = "gc.freeze()"


def plain_entry(folder: Path) -> Path:
    """A copy of run.py without the freeze, in `folder`, with conf/ linked beside it."""
    text = (REPO / "run.py").read_text()
    if FREEZE_CALL not in text:
        raise SystemExit(f"run.py has no {FREEZE_CALL} call to leave out")
    entry = folder / "run.py"
    entry.write_text(text.replace(FREEZE_CALL, "pass"))
    (folder / "conf").symlink_to(REPO / "conf")
    return entry


def last_log_time(text: str) -> float:
    """The epoch seconds of the last `[YYYY-MM-DD HH:MM:SS,mmm]` log line in `text`."""
    stamps = [line[1:24] for line in text.splitlines() if line.startswith("[20")]
    if not stamps:
        raise RuntimeError(f"no log line in the run's output:\n{text[-3000:]}")
    return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def timed(entry: Path, out: Path) -> tuple[float, float]:
    """Wall seconds of one `debug=fast` run, and seconds from its last log line to exit."""
    command = [sys.executable, str(entry), "debug=fast", f"paths.output_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    ended_at, wall = time.time(), time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{entry} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return wall, ended_at - last_log_time(done.stdout + done.stderr)


def main() -> None:
    """Runs the rounds and prints the medians, their difference and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2 if quick() else 4)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"freeze": [], "plain": []}
    tails: dict[str, list[float]] = {"freeze": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        entries = {"freeze": REPO / "run.py", "plain": plain_entry(Path(tmp))}
        for round_index in range(args.rounds + 1):  # round 0 warms the OS caches
            kinds = ("freeze", "plain") if round_index % 2 else ("plain", "freeze")
            for kind in kinds:
                wall, tail = timed(entries[kind], Path(tmp) / f"{kind}{round_index}")
                print(f"round {round_index} {kind:<7} {wall:6.2f} s  last log -> exit {tail:.2f} s")
                if round_index:
                    walls[kind].append(wall)
                    tails[kind].append(tail)
    wall = {kind: statistics.median(values) for kind, values in walls.items()}
    tail = {kind: statistics.median(values) for kind, values in tails.items()}
    print(f"\nmedian of {args.rounds} rounds: `python run.py debug=fast` (s)")
    for kind in walls:
        print(f"{kind:<7} wall {wall[kind]:6.2f}  last log line -> exit {tail[kind]:5.2f}")
    ratio = wall["freeze"] / wall["plain"]
    saved = wall["plain"] - wall["freeze"]
    print(f"freeze / plain: {ratio:.3f} ({saved:.2f} s less per process)")
    record(
        "exit_time",
        "python run.py debug=fast, with / without gc.freeze() at exit",
        ratio,
        note=f"{wall['freeze']:.2f} s / {wall['plain']:.2f} s; last log line -> exit "
        f"{tail['freeze']:.2f} s / {tail['plain']:.2f} s",
    )


if __name__ == "__main__":
    main()
