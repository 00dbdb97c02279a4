"""The README cannot rot: its config list is generated, and its commands run as written.

Every line of a fenced block that follows a `<!-- readme-test ... -->` comment in
README.md is a command this module runs, in a subprocess, with its outputs in a temp
dir and tiny settings appended (`TINY`, minus the keys and groups the command sets
itself). Placeholders (`<run id>`, `outputs/runs/<date>/...`, `photos/`) are replaced
by the results of the commands before them, so the block runs top to bottom.

A command that selects a config option which does not exist in conf/ yet (a feature
not added yet) is listed by `test_pending_readme_commands_name_a_missing_option`;
once the option exists, the command runs like the others. To give a command settings of
its own, add it to `EXTRA`.

The sweeps of the block (`-m`) are not run a second time here: each is run, the same sweep
with more checks, by the test `SWEEPS_RUN_BY` names. Here every job of such a command is
composed and validated as written, so a README line that stops parsing still fails.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.io import write_png

from tests.conftest import CONF, REPO, free_port, query, seed_store, server_env

README = REPO / "README.md"
MARKER = "<!-- readme-test"

# Appended to every `python run.py` command, except the keys and groups it sets itself.
TINY = [
    "debug=fast",
    "data=synthetic",
    "data.num_samples=160",
    "model=timm",
    "model.name=test_resnet",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    # The reports are tested in test_evaluate.py; here they would only add minutes.
    "analysis.enabled=false",
    "logger.export_model=false",  # the logged model is tested in tests/tracking/
]
# Settings for particular commands, by a substring of the command.
EXTRA: dict[str, list[str]] = {}
# A sweep of the block (by a substring) -> the test that runs that sweep.
SWEEPS_RUN_BY = {
    "-m optim.lr=": "tests/sweeps/test_sweeps.py::"
    "test_grid_sweep_nests_children_under_a_parent_and_aggregates_seeds",
    "-m hparams_search=optuna": "tests/sweeps/test_sweeps.py::"
    "test_optuna_prunes_hopeless_trials_and_reports_to_the_parent",
    "-m hydra/launcher=slurm": "tests/slurm/test_slurm.py::"
    "test_two_job_sweep_runs_as_slurm_jobs_in_one_sweep_dir",
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


def sweep_jobs(command: str) -> list[list[str]]:
    """The overrides of every job of a `python run.py -m ...` command (its grid)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes = []
    for override in OverridesParser.create().parse_overrides(shlex.split(command)[3:]):
        key = override.get_key_element()
        if override.is_sweep_override():
            values = [str(v) for v in override.sweep_string_iterator()]
        else:
            values = [override.get_value_element_as_str()]
        axes.append([f"{key}={value}" for value in values])
    return [list(job) for job in itertools.product(*axes)]


class Session:
    """Runs the README's commands in order, in one temp dir, remembering their results."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.out = tmp / "outputs"
        seed_store(self.out)
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
        if "-m" in args:
            return self.compose_sweep(command)
        tiny = [*with_tiny(args[2:]), *(e for k, v in EXTRA.items() if k in command for e in v)]
        if {"mode=eval", "mode=predict"} & set(args):
            # They build the checkpoint's own data and model, and train nothing: a data,
            # model or training override is refused.
            training = ("data", "model", "optim", "loss", "sched", "sampler", "trainer.")
            tiny = [t for t in tiny if not t.startswith(training)]
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
        done = subprocess.run(
            [sys.executable, str(REPO / "run.py"), *args[2:], *extra],
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command!r} failed:\n{output[-4000:]}"
        self.done[key] = output
        if self.first_run_dir is None and (run_dir / "metrics.json").is_file():
            self.first_run_dir = run_dir
        return output

    def compose_sweep(self, command: str) -> str:
        """Composes and validates every job of a sweep; the test named for it runs it."""
        from hydra import compose, initialize_config_dir

        from runner.config.validation import validate

        (runner_test,) = [t for key, t in SWEEPS_RUN_BY.items() if key in command]
        path, _, name = runner_test.partition("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{runner_test} is gone"
        jobs = sweep_jobs(command)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for job in jobs:
                overrides = [*job, f"paths.output_dir={self.out}", "paths.run_dir=unused"]
                validate(compose("train", overrides=overrides, return_hydra_config=True))
        return f"{len(jobs)} job(s) composed; run by {runner_test}"

    def serve(self, args: list[str]) -> str:
        """Starts `mlflow ui` as written (on a free port), waits for it, stops it."""
        port = free_port()
        mlflow = Path(sys.executable).with_name("mlflow")
        proc = subprocess.Popen(
            # A free port; one worker starts in about 2/3 of the time of the default 4.
            [str(mlflow), *args[1:], "--port", str(port), "--workers", "1"],
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=server_env(),
        )
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


def test_readme_names_the_keys_a_resume_may_change_and_the_keys_added_since_runs_began():
    """The README's lists are written by hand: this keeps them with runner.config.changes."""
    from runner.config.changes import ADDED_KEYS, MAY_CHANGE_ON_RESUME

    text = " ".join(README.read_text().split())  # one line: names may wrap
    start = text.index("What may change on resume:")
    paragraph = text[start : text.index("is no change at the value that", start)]
    # Set by the runner itself (a resume's own switch, the checkout's folder, other modes).
    internal = {"trainer.resume", "paths.root_dir", "mode", "ckpt"}
    for key in MAY_CHANGE_ON_RESUME:
        name = key.rstrip(".")
        if name not in internal:
            assert f"`{name}`" in paragraph, f"README's 'What may change on resume' lacks {name}"
    for key in ADDED_KEYS:
        assert f"`{key}`" in paragraph, f"README's list of keys added to conf/ lacks {key}"


def test_readme_has_the_commands_people_need():
    commands = readme_commands()
    for needed in (
        "python run.py",
        " -m ",
        "hparams_search=optuna",
        "hydra/launcher=slurm",
        "mode=eval",
        "mode=predict",
        "mlflow ui",
        "--help",
    ):
        assert any(needed in c or c == needed for c in commands), needed
    assert len(commands) <= 15, "one screen of commands"
    first_block = README.read_text().split("## ", 1)[0]
    assert "paths.output_dir=<dir>" in first_block, "the one setting that moves every output"


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
        if " -m optim.lr=1e-3,3e-3 aug=basic,strong" in command:
            assert output.startswith("4 job(s) composed"), "the grid sweep has 4 jobs"
    assert len(ran) >= 9, ran
    print("README commands and their seconds:", *ran, sep="\n  ")
