"""The benchmark scripts still run against the runner they measure, and `make bench`
keeps the hand-written part of RESULTS.md.

No test ran them: when conf/optim/ options gained a defaults list, step_overhead.py (and
input_pipeline.py and options.py, which build their sides with its `load_group`) stopped
with a TypeError, unseen until the figures were measured again. A tiny run of
step_overhead.py builds every side those scripts build (model, optimizer, schedule, loss,
augmentation) through the runner's loop; its figures are not read here.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_step_overhead_runs_a_few_steps_of_each_side():
    environment = {k: v for k, v in os.environ.items() if k != "RUNNER_BENCH_RESULTS"}
    tiny = ["--rounds", "1", "--steps", "2", "--warmup-steps", "1"]
    done = subprocess.run(
        [sys.executable, "benchmarks/step_overhead.py", *tiny],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "runner/hand-written throughput ratio:" in output, output[-3000:]


def load_run_all():
    """benchmarks/run_all.py as a module (benchmarks/ is a folder of scripts)."""
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_bench_rewrites_its_figures_and_keeps_the_hand_written_sections(tmp_path):
    """`make bench` wrote RESULTS.md afresh: the sections written up by hand were lost."""
    run_all = load_run_all()
    results = tmp_path / "RESULTS.md"
    history = [run_all.HISTORY_HEADING, "", "## 2026-11-26: a stop", "", "figures by hand"]
    results.write_text("\n".join(["# Benchmark results", "", "| old | figure |", *history]))
    row = {"benchmark": "startup", "figure": "first step (s)", "value": "3.9", "goal": ""}
    row |= {"passed": None, "note": ""}
    outputs = {"startup": ("its output", 41.0, 0)}
    run_all.write_report(results, True, 1, [row], outputs, ("0.5", "1.0"))
    text = results.read_text()
    assert "| old | figure |" not in text
    assert "| startup | first step (s) | 3.9 |" in text and "its output" in text
    assert text.endswith("\n".join(history))
    assert text.count(run_all.HISTORY_HEADING) == 1
    results.write_text("# Benchmark results\n\nno hand-written part\n")
    run_all.write_report(results, True, 1, [row], outputs, ("0.5", "1.0"))
    assert "no hand-written part" not in results.read_text()
