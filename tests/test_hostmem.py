"""trainer.keep_host_memory: freed large blocks stay in the process (glibc)."""

from __future__ import annotations

import resource

import torch

from runner.hostmem import keep_freed_memory

BLOCK = 16_000_000  # floats: 64 MB, far above glibc's default mmap threshold


def page_faults_of_a_second_allocation() -> int:
    torch.empty(BLOCK).fill_(1.0)  # allocated, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BLOCK).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_kept_memory_is_reused_without_page_faults_and_the_default_returns_it():
    try:
        assert keep_freed_memory(False)  # glibc: this machine and CI are Debian/Ubuntu
        returned = page_faults_of_a_second_allocation()
        assert keep_freed_memory(True)
        kept = page_faults_of_a_second_allocation()
    finally:
        keep_freed_memory(True)  # what a run does; the rest of the suite runs like one
    pages = BLOCK * 4 // 4096
    assert returned > pages // 2  # mapped afresh: a fault per page on first touch
    assert kept < pages // 20
