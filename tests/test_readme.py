"""The README cannot rot: its config list is generated, and its commands run as written.

Every line of a fenced block that follows a `<!-- readme-test ... -->` comment in
README.md is a command this module runs, in a subprocess, with its outputs in a temp
dir and tiny settings appended (`TINY`, minus the keys and groups the command sets
itself). Placeholders (`<run id>`, `outputs/runs/<date>/...`, `photos/`) are replaced
by the results of the commands before them, so the block runs top to bottom.

A command that selects a config option which does not exist in conf/ yet (a feature
not added yet) is listed by `test_pending_readme_commands_name_a_missing_option`;
once the option exists, the command runs like the others. To give a command settings of
its own (e.g. fewer Optuna trials), add it to `EXTRA`.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.io import write_png

from tests.conftest import CONF, REPO, query

README = REPO / "README.md"
MARKER = "<!-- readme-test"

# Appended to every `python run.py` command, except the keys and groups it sets itself.
TINY = [
    "debug=fast",
    "data=synthetic",
    "data.num_samples=160",
    "model=timm",
    "model.name=resnet10t",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    # The reports are tested in test_evaluate.py; here they would only add minutes.
    "analysis.enabled=false",
]
# Settings for particular commands, by a substring of the command.
EXTRA: dict[str, list[str]] = {
    "hparams_search=optuna": ["hydra.sweeper.n_trials=2"],
    "hydra/launcher=slurm": ["hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20"],
}


def readme_commands() -> list[str]:
    """The command lines of the marked blocks, without their trailing comments."""
    commands, armed, inside = [], False, False
    for line in README.read_text().splitlines():
        if line.startswith(MARKER):
            armed = True
        elif armed and line.startswith("```"):
            inside, armed = True, False
        elif inside and line.startswith("```"):
            inside = False
        elif inside and line.strip():
            commands.append(re.sub(r"\s+#\s.*$", "", line).strip())
    return commands


def missing_option(command: str) -> str | None:
    """The first `group=option` of the command that conf/ does not have (yet).

    A `key=value` names a config group when conf/<key>/ exists or when `key` is not a
    top-level key of conf/train.yaml (a group not added yet, e.g. hparams_search);
    it is missing when conf/<key>/<value>.yaml is absent.
    """
    top_level = set(OmegaConf.load(CONF / "train.yaml"))
    for token in shlex.split(command)[2:]:
        key, _, value = token.partition("=")
        if not value or "." in key or key.startswith(("-", "+")):
            continue
        if not (CONF / key).is_dir() and key in top_level:
            continue
        if not all((CONF / key / f"{option}.yaml").is_file() for option in value.split(",")):
            return token
    return None


def with_tiny(args: list[str]) -> list[str]:
    """TINY minus what the command sets (a key, its group, or data/model via experiment=)."""
    keys = {arg.partition("=")[0] for arg in args if "=" in arg}
    taken = keys | ({"data", "model"} if "experiment" in keys else set())
    return [t for t in TINY if t.split("=")[0] not in taken and t.split(".")[0] not in taken]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Session:
    """Runs the README's commands in order, in one temp dir, remembering their results."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.out = tmp / "outputs"
        self.count = 0
        self.first_run_dir: Path | None = None
        self.done: dict[frozenset[str], str] = {}

    def substitute(self, command: str) -> str:
        run_dir = self.first_run_dir
        if "<" in command and run_dir is None:
            raise AssertionError(f"{command!r} needs a training run before it in the README")
        if run_dir is not None:
            best = json.loads((run_dir / "metrics.json").read_text())
            assert best["epochs"] >= 1
            sql = "SELECT run_uuid FROM tags WHERE key = 'run_dir' AND value = ?"
            ((run_id,),) = query(self.out / "mlflow.db", sql, str(run_dir))
            command = re.sub(r"outputs/runs/<date>/<time>_<id>", str(run_dir), command)
            command = command.replace("<run id>", run_id)
        if "photos/" in command:
            photos = self.tmp / "photos"
            photos.mkdir(exist_ok=True)
            for i in range(3):
                image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
                write_png(image, str(photos / f"{i}.png"))
            command = command.replace("photos/", f"{photos}/")
        return command.replace("sqlite:///outputs/", f"sqlite:///{self.out}/")

    def run(self, command: str) -> str:
        args = shlex.split(self.substitute(command))
        if args[0] == "mlflow":
            return self.serve(args)
        assert args[:2] == ["python", "run.py"], f"add a way to run {command!r} to this test"
        if "hydra/launcher=slurm" in args:  # the real local cluster of tests/slurm/
            from tests.slurm.conftest import start_local_cluster

            start_local_cluster()
        tiny = [*with_tiny(args[2:]), *(e for k, v in EXTRA.items() if k in command for e in v)]
        if "--help" in args:
            tiny = []
        # `python run.py` on tiny settings already is `python run.py debug=fast` on them:
        # a command that comes out the same as one that ran is not run twice.
        key = frozenset([*args[2:], *tiny])
        if key in self.done:
            return self.done[key]
        self.count += 1
        run_dir = self.tmp / f"run{self.count}"
        extra = [*tiny, f"paths.output_dir={self.out}", f"hydra.run.dir={run_dir}"]
        if "--help" in args:
            extra = []
        done = subprocess.run([sys.executable, str(REPO / "run.py"), *args[2:], *extra],
                              cwd=self.tmp, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command!r} failed:\n{output[-4000:]}"
        self.done[key] = output
        if self.first_run_dir is None and (run_dir / "metrics.json").is_file():
            self.first_run_dir = run_dir
        return output

    def serve(self, args: list[str]) -> str:
        """Starts `mlflow ui` as written (on a free port), waits for it, stops it."""
        port = free_port()
        mlflow = Path(sys.executable).with_name("mlflow")
        proc = subprocess.Popen(
            # A free port; one worker starts in about 2/3 of the time of the default 4.
            [str(mlflow), *args[1:], "--port", str(port), "--workers", "1"],
            cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search"
                    request = urllib.request.Request(url + "?max_results=10")
                    with urllib.request.urlopen(request, timeout=2) as reply:
                        return reply.read().decode()
                except OSError:
                    assert proc.poll() is None, proc.stdout.read()
                    time.sleep(0.5)
            raise AssertionError("mlflow ui did not answer within 90 s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_readme_config_list_is_generated_from_conf():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_config_docs
    finally:
        sys.path.pop(0)
    current = README.read_text()
    assert gen_config_docs.update(README, gen_config_docs.render()) == current, (
        "README.md's config list is stale: run python scripts/gen_config_docs.py"
    )


def test_readme_has_the_commands_people_need():
    commands = readme_commands()
    for needed in ("python run.py", " -m ", "hparams_search=optuna", "hydra/launcher=slurm",
                   "mode=eval", "mode=predict", "mlflow ui", "--help"):  # fmt: skip
        assert any(needed in c or c == needed for c in commands), needed
    assert len(commands) <= 15, "one screen of commands"


def test_pending_readme_commands_name_a_missing_option():
    pending = {c: missing_option(c) for c in readme_commands() if missing_option(c)}
    # Only these features may be pending, and only while their
    # config option is absent here; then they run in test_readme_commands_run.
    assert set(pending.values()) <= {"hparams_search=optuna", "hydra/launcher=slurm"}, pending


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    session = Session(tmp_path)
    ran = []
    for command in readme_commands():
        if missing_option(command):
            continue
        started = time.perf_counter()
        output = session.run(command)
        ran.append((command, round(time.perf_counter() - started, 1)))
        if command == "python run.py":
            assert "run summary" in output and "best epoch" in output
            assert "then open http://127.0.0.1:5000/#/experiments/" in output, "the MLflow URL"
        if command.startswith("python run.py --help"):
            assert "Config groups" in output
        if "mode=eval" in command:
            assert "eval summary" in output and "source run" in output
        if "mode=predict" in command:
            rows = (tmp_path / f"run{session.count}" / "predictions.csv").read_text().splitlines()
            assert len(rows) == 4, rows
        if command.startswith("mlflow ui"):
            assert '"experiments"' in output and "synthetic" in output
    jobs = Counter(
        p.parent.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json")
    )
    assert 4 in jobs.values(), "the grid sweep runs 4 jobs"
    assert len(ran) >= 9, ran
    print("README commands and their seconds:", *ran, sep="\n  ")
