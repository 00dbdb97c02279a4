"""Host syncs per batch of each aug preset on CUDA, counted by PyTorch's sync debug mode.

For each preset in conf/aug (and `strong` with MixUp/CutMix), `DeviceAugment` is built
as in benchmarks/augment.py, run on a few untimed uint8 batches on the GPU, then on
`--batches` more under `torch.cuda.set_sync_debug_mode("warn")`; each warning is one
synchronizing call (a device value read on the host, a blocking copy). The table gives
syncs per batch and the source lines that asked for them. PyTorch calls the mode a
prototype that does not detect every synchronizing operation, so 0 is a floor.

The runner's whole training step (aug=none and aug=basic, MixUp/CutMix, EMA, clipping)
is checked with the mode set to "error" by tests/training/test_perf.py's `gpu` test.

Run it from the repository root on a machine with CUDA (benchmarks/cuda_check.sh runs
it with the other CUDA checks; run_all.py, for the CPU, does not)::

    PYTHONPATH=. python benchmarks/cuda_syncs.py
"""

from __future__ import annotations

import argparse
import collections
import traceback
import warnings
from pathlib import Path

import torch
from augment import MIX, PRESETS, build_kornia
from bench_results import record

REPO = Path(__file__).resolve().parent.parent


def count_syncs(augment, batch: torch.Tensor, labels: torch.Tensor, batches: int):
    """Runs `batches` batches under the sync debug mode; returns (syncs, where they came from)."""
    sources: collections.Counter[str] = collections.Counter()
    syncs = 0

    def on_warning(message, category, filename, lineno, file=None, line=None):
        nonlocal syncs
        if "synchroniz" not in str(message):
            return
        syncs += 1
        frames = [
            f
            for f in traceback.extract_stack()
            if "/torch/" not in f.filename
            and not f.filename.endswith("warnings.py")
            and f.name != "on_warning"
        ]
        caller = frames[-1]
        sources[f"{Path(caller.filename).name}:{caller.lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = on_warning
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(batches):
                augment.mix(augment(batch), labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return syncs, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs CUDA")
    device = torch.device("cuda")
    torch.manual_seed(0)
    shape = (args.batch_size, 3, args.size, args.size)
    batch = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.size}x{args.size}, "
        f"batch {args.batch_size}, {args.batches} batches per preset after 3 untimed\n"
    )
    print(f"{'preset':<16} {'syncs/batch':>11}  where")
    for name, overrides in [(p, ()) for p in PRESETS] + [("strong+mix", MIX)]:
        augment = build_kornia(name.split("+")[0], args.size, device, *overrides)
        for _ in range(3):
            augment.mix(augment(batch), labels)
        syncs, sources = count_syncs(augment, batch, labels, args.batches)
        where = ", ".join(f"{src} x{n}" for src, n in sources.most_common(4))
        print(f"{name:<16} {syncs / args.batches:>11.2f}  {where}", flush=True)
        record("cuda_syncs", f"host syncs per batch: {name}", f"{syncs / args.batches:.2f}")


if __name__ == "__main__":
    main()
