#!/usr/bin/env bash
# The CUDA checks and figures in one call, for a machine with one NVIDIA GPU:
#
#   bash benchmarks/cuda_check.sh OUT_DIR
#
# 1. the `gpu`-marked tests (RUNNER_REQUIRE_GPU=1: a missing CUDA fails them);
# 2. training runs on CUDA: the default run, one epoch of every aug preset, precision
#    32 / bf16 / 16 with MixUp + CutMix, EMA and gradient accumulation, and compile;
# 3. benchmarks/step_overhead.py: the runner's step against a hand-written loop,
#    resnet18 and resnet50, 224 px synthetic data, bf16 autocast, channels_last, batch 256;
# 4. benchmarks/augment.py: each preset's share of a training step and its speed against
#    per-sample torchvision v2 in 8 DataLoader workers;
# 5. benchmarks/cuda_syncs.py: host syncs per batch of each preset;
# 6. the throughput mode with trainer.compile=false and true;
# 7. checkpoints made on CUDA: a resumed run, eval on CUDA and on the CPU, predict;
# 8. experiment=airbench94 on CIFAR-shaped synthetic data: a run with its reports, then
#    benchmarks/airbench.py (the runner's epoch time against a hand-written loop), eager
#    and compiled.
#
# CUDA_CHECK_ONLY="tests presets" runs only the parts of those names (tests, train,
# presets, step, augment, syncs, compile, ckpt, airbench_run, airbench).
#
# Each part has its own time limit and log (OUT_DIR/<part>.log); a part that fails does
# not stop the next, and no part starts or runs past CUDA_CHECK_SECONDS (default 540 s)
# from the start. Training runs use logger=none (nothing is tracked) so that the
# machine needs no MLflow. Measured figures also go to OUT_DIR/results.jsonl.
set -u
out=${1:?usage: bash benchmarks/cuda_check.sh OUT_DIR}
mkdir -p "$out"
runs=$(mktemp -d)
export RUNNER_BENCH_RESULTS="$out/results.jsonl" PYTHONUNBUFFERED=1
# The benchmarks import the runner from this checkout (it is not installed there).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary=()
deadline=${CUDA_CHECK_SECONDS:-540}
only=${CUDA_CHECK_ONLY:-}

part() {  # part NAME SECONDS COMMAND...: runs COMMAND under a time limit into NAME.log
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS
  if [[ -n $only && " $only " != *" $name "* ]]; then
    return
  fi
  if ((deadline - SECONDS < 20)); then
    summary+=("$name skipped: the ${deadline} s budget is spent: $*")
    return
  fi
  ((limit > deadline - SECONDS)) && limit=$((deadline - SECONDS))
  echo "=== $name (limit $limit s): $*" | tee -a "$out/$name.log"
  timeout -s TERM -k 10 "$limit" "$@" >>"$out/$name.log" 2>&1
  local rc=$?
  summary+=("$name rc=$rc $((SECONDS - began))s: $*")
  echo "=== $name rc=$rc in $((SECONDS - began)) s" | tee -a "$out/$name.log"
}

cli=(python3 run.py logger=none trainer.device=cuda)
sweep=(python3 run.py -m logger=none trainer.device=cuda)  # -m must come first
nvidia-smi -L >"$out/setup.log" 2>&1
python3 -c "import torch, torchvision, timm, kornia; print(torch.__version__, \
torchvision.__version__, timm.__version__, kornia.__version__, torch.cuda.get_device_name())" \
  >>"$out/setup.log" 2>&1

part tests 120 env RUNNER_REQUIRE_GPU=1 python3 -m pytest -p no:cacheprovider -q -m gpu \
  tests/training/test_perf.py tests/augment/test_device.py
part train 80 "${cli[@]}" hydra.run.dir="$runs/default"
# Every aug preset of conf/aug (a file starting with _ holds shared keys, not a preset).
presets=$(cd conf/aug && ls [!_]*.yaml | sed 's/\.yaml$//' | paste -sd, -)
part presets 100 "${sweep[@]}" trainer.max_epochs=1 hydra.sweep.dir="$runs/presets" \
  aug="$presets"
part train 70 "${sweep[@]}" trainer.max_epochs=2 hydra.sweep.dir="$runs/precision" \
  trainer.precision=32,bf16,16 aug=strong aug.mixup_alpha=0.8 aug.cutmix_alpha=1.0 \
  trainer.ema_decay=0.8 trainer.accumulate_grad_batches=2
part step 90 python3 benchmarks/step_overhead.py --device cuda --data synthetic \
  --image-size 224 --batch-size 256 --precision bf16 --model resnet18 --rounds 10 --steps 10
part step 80 python3 benchmarks/step_overhead.py --device cuda --data synthetic \
  --image-size 224 --batch-size 256 --precision bf16 --model resnet50 --rounds 8 --steps 8
part augment 130 python3 benchmarks/augment.py --device cuda --workers 8 \
  --sizes 32x256,224x256
part syncs 60 python3 benchmarks/cuda_syncs.py
part compile 50 "${cli[@]}" experiment=throughput 'throughput.models=[resnet18,resnet50]' \
  'throughput.batch_sizes=[256]' trainer.compile=false hydra.run.dir="$runs/eager"
part compile 110 "${cli[@]}" experiment=throughput 'throughput.models=[resnet18,resnet50]' \
  'throughput.batch_sizes=[256]' trainer.compile=true hydra.run.dir="$runs/compiled"
part compile 90 "${cli[@]}" trainer.max_epochs=2 trainer.compile=true hydra.run.dir="$runs/compile"
best="$runs/ck/checkpoints/best.pt"
part ckpt 60 "${cli[@]}" trainer.max_epochs=2 hydra.run.dir="$runs/ck"
part ckpt 60 "${cli[@]}" trainer.max_epochs=3 hydra.run.dir="$runs/ck"  # resumes at epoch 3
part ckpt 40 "${cli[@]}" mode=eval ckpt="$best" hydra.run.dir="$runs/eval"
part ckpt 40 python3 run.py logger=none trainer.device=cpu mode=eval ckpt="$best" \
  hydra.run.dir="$runs/eval_cpu"
part ckpt 20 python3 -c "import sys, numpy as np; from PIL import Image; \
from sklearn.datasets import load_digits; from pathlib import Path; d = Path(sys.argv[1]); \
d.mkdir(); [Image.fromarray((im * 15).astype(np.uint8)).save(d / f'{i}.png') \
for i, im in enumerate(load_digits().images[:8])]" "$runs/images"
part ckpt 40 "${cli[@]}" mode=predict ckpt="$best" predict.input="$runs/images" \
  hydra.run.dir="$runs/predict"
cat "$runs/predict/predictions.csv" >>"$out/ckpt.log" 2>&1
part airbench_run 90 "${cli[@]}" experiment=airbench94 data=synthetic \
  data.num_samples=56250 trainer.max_epochs=3 hydra.run.dir="$runs/airbench"
part airbench 150 python3 benchmarks/airbench.py --device cuda --epochs 6 --rounds 2
part airbench 200 python3 benchmarks/airbench.py --device cuda --epochs 6 --rounds 2 --compile

printf '%s\n' "${summary[@]}" | tee "$out/summary.log"
rm -rf "$runs"
