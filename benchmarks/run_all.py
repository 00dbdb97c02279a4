"""Runs every benchmark script and writes benchmarks/RESULTS.md (`make bench`).

Each script runs in its own process, one after the other, with RUNNER_BENCH_RESULTS
pointing at a file where it records its figures (see bench_results.py). RESULTS.md gets
the machine (CPU model, cores, load), the library versions, the date, a table of every
recorded figure with its goal and whether it was met, and each script's full output.
Everything from the `HISTORY_HEADING` line on (measurements written up by hand, one
section per stop) is kept as it was.

    .venv/bin/python benchmarks/run_all.py            # each script's own (fuller) settings
    .venv/bin/python benchmarks/run_all.py --quick    # few rounds each: minutes on idle cores
    .venv/bin/python benchmarks/run_all.py --only startup options
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# (script, quick-mode arguments): quick mode also sets RUNNER_BENCH_QUICK=1, which the
# newer scripts read themselves.
SCRIPTS = {
    "step_overhead": ["--rounds", "4", "--steps", "4", "--warmup-steps", "2"],
    "logging_overhead": ["--rounds", "3", "--epochs", "10", "--steps", "3"],
    "input_pipeline": ["--rounds", "2", "--steps", "3"],
    "startup": ["--rounds", "1"],
    "exit_time": ["--rounds", "1"],
    "options": ["--rounds", "2", "--steps", "2"],
    "augment": ["--repeats", "5"],  # every preset at both sizes: about a minute
    "checkpoint_cost": [],
    "imagefolder_cache": ["--num-images", "500", "--repeats", "1"],
    "imbalance": ["--epochs", "1", "--seeds", "0"],
    "sweep_overhead": ["--jobs", "2"],
    "optuna_pruning": ["--trials", "6", "--epochs", "3"],
    "default_run": ["--rounds", "1"],
    "analysis_cost": ["--rounds", "1"],
    "audit": ["--epochs", "3", "--train-epochs", "3", "--folds", "3"],  # quick: one seed
    "audit_duplicates": ["--epochs", "2"],
    "audit_weights": ["--epochs", "3", "--folds", "3"],  # quick: one seed
    "eval_memory": [],
}
# Where the hand-written part of RESULTS.md begins; `make bench` rewrites what is above it.
HISTORY_HEADING = "## Measured by hand, stop by stop"
VERSIONS = ("torch", "torchvision", "kornia", "timm", "torchmetrics", "mlflow", "hydra-core")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1-minute load average (how busy the machine was), where the OS has it."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def machine() -> list[str]:
    """Lines describing the machine and the software."""
    import torch

    versions = []
    for name in VERSIONS:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; GPU: {gpu}",
        f"- Python {platform.python_version()}; " + ", ".join(versions),
        f"- torch threads: {torch.get_num_threads()}",
    ]


def run_script(name: str, args: list[str], quick: bool, results: Path) -> tuple[str, float, int]:
    """Runs one script; returns its output, its wall time and its exit status."""
    env = {
        **os.environ,
        "RUNNER_BENCH_RESULTS": str(results),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if quick:
        env["RUNNER_BENCH_QUICK"] = "1"
    command = [sys.executable, str(HERE / f"{name}.py"), *(args if quick else [])]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = done.stdout + (f"\n[stderr]\n{done.stderr[-4000:]}" if done.returncode else "")
    print(done.stdout[-1500:], flush=True)
    if done.returncode:
        print(f"!! {name} failed with status {done.returncode}:\n{done.stderr[-3000:]}")
    return output, seconds, done.returncode


def write_report(
    path: Path, quick: bool, jobs: int, rows: list[dict], outputs: dict, loads: tuple
) -> None:
    """Writes RESULTS.md: this run's figures and outputs, then the file's hand-written part."""
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (benchmarks/run_all.py{' --quick' if quick else ''}) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {jobs} script(s) at a time.",
        "",
        *machine(),
        f"- load average (1 min) at start / end: {loads[0]} / {loads[1]} (other processes "
        "shared the cores: absolute figures are noisy; each script measures its two sides "
        "in interleaved rounds in one process and reports ratios)",
        "",
        "## Figures",
        "",
        "| benchmark | figure | value | goal | met | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row["passed"]]
        cells = [row["benchmark"], row["figure"], row["value"], row["goal"], met, row["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += ["", "## Output of each script", ""]
    for name, (output, seconds, status) in outputs.items():
        state = "" if status == 0 else f", FAILED with status {status}"
        lines += [f"### {name} ({seconds:.0f} s{state})", "", "```", output.rstrip(), "```", ""]
    lines += hand_written_part(path)
    path.write_text("\n".join(lines))


def hand_written_part(path: Path) -> list[str]:
    """The lines of `path` from `HISTORY_HEADING` on; none when it has no such heading."""
    if not path.is_file():
        return []
    earlier = path.read_text(encoding="utf-8").splitlines()
    if HISTORY_HEADING not in earlier:
        return []
    return earlier[earlier.index(HISTORY_HEADING) :]


def main() -> None:
    """Runs the scripts and writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick settings")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--records", type=Path, default=None, help="keep the figures here")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="scripts run at once (more finishes sooner on a busy machine; ratios stay "
        "side by side within each script, absolute figures get noisier)",
    )
    args = parser.parse_args()
    quick = args.quick or os.environ.get("RUNNER_BENCH_QUICK", "") not in ("", "0")
    start_load = load()
    with tempfile.TemporaryDirectory() as tmp:
        results = args.records or Path(tmp) / "results.jsonl"
        results.touch()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                name: pool.submit(run_script, name, SCRIPTS[name], quick, results)
                for name in args.only
            }
            outputs = {name: future.result() for name, future in futures.items()}
        rows = [json.loads(line) for line in results.read_text().splitlines() if line]
    write_report(args.out, quick, args.jobs, rows, outputs, (start_load, load()))
    failed = [name for name, (_, _, status) in outputs.items() if status]
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
