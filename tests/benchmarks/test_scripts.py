"""The benchmark scripts still run against the runner they measure.

No test ran them: when conf/optim/ options gained a defaults list, step_overhead.py (and
input_pipeline.py and options.py, which build their sides with its `load_group`) stopped
with a TypeError, unseen until the figures were measured again. A tiny run of
step_overhead.py builds every side those scripts build (model, optimizer, schedule, loss,
augmentation) through the runner's loop; its figures are not read here.
"""

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
