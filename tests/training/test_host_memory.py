"""trainer.keep_host_memory: freed large blocks stay in the process (glibc).

Measured in a fresh interpreter, because glibc cannot return to its adaptive default
once a threshold is set: first with glibc's defaults, then after `keep_freed_memory()`.
"""

from __future__ import annotations

import json
import subprocess
import sys

from runner.config.resolvers import REPO_ROOT

CHILD = """
import json, resource, torch
from runner.training.host_memory import keep_freed_memory

BLOCK = 16_000_000  # floats: 64 MB, above glibc's largest adaptive mmap threshold (32 MiB)


def faults_per_allocation(repeats=6):
    for _ in range(6):  # warm-up: the heap grows until it holds the block
        torch.empty(BLOCK).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        torch.empty(BLOCK).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


default = faults_per_allocation()
applied = keep_freed_memory()
print(json.dumps({"default": default, "applied": applied, "kept": faults_per_allocation()}))
"""


def test_kept_memory_is_reused_where_glibc_maps_every_allocation_afresh():
    result = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    pages = 16_000_000 * 4 // 4096
    assert faults["applied"]  # glibc: this machine and CI are Debian/Ubuntu
    assert faults["default"] > pages // 2  # mapped afresh: a fault per page on first touch
    assert faults["kept"] < faults["default"] / 4
