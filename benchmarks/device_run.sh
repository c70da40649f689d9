#!/usr/bin/env bash
# One prepared call on the lent GPU machine (issues 5 and 6). Everything it writes goes
# under $OUT, which comes back; whatever finished before a time limit comes back too.
#
# Here, once (pip works here, not there): bash benchmarks/device_prepare.sh
# Then one device call, carrying the wheels and the shrunk data:
#   run(command="bash benchmarks/device_run.sh bench busi", timeout_s=600,
#       carry=[".whl", ".device-data/busi", ".device-data/COMMIT"])
#   run(command="bash benchmarks/device_run.sh speed", timeout_s=400,
#       carry=[".whl", ".device-data/busi", ".device-data/COMMIT"])
#   run(command="bash benchmarks/device_run.sh check", timeout_s=300, carry=[".whl"])
# (both data sets together would not fit the 64 MiB that travels: one per call). Back here,
# copy <files_at>/results/* to benchmarks/results/ (the tables name the device's hardware)
# and regenerate the README section:
#   python -c "import sys; sys.path.insert(0, 'benchmarks'); import report; report.update_readme()"
# The per-run records come back under <files_at>/runs/ (checkpoints stay there).
#
# Usage: device_run.sh bench DATASET [BUDGET] [PARALLEL] [SECONDS] [graphs]
#                                                        (default gpu 9 540; "graphs": run the
#                                     GPU-only tests first and, if they pass, train with CUDA
#                                     graphs, which the tables then say; ROWS="pattern ..."
#                                     picks other rows, e.g. ROWS="unext-*"; BENCH_ARGS adds
#                                     run.py options, e.g. ROWS="malunet-*-long"
#                                     BENCH_ARGS="--long-epochs 300": the compute controls)
#        device_run.sh speed [SECONDS] [host-guard]                    (default 330; "host-guard":
#                                     instead of three runs sharing the GPU, MALUNet and
#                                     SemiSeg-CAW with the loss checked on the host every
#                                     step, against the device guard of the first part)
#        device_run.sh check [SECONDS]                                 (default 240)
# speed and check first run the GPU-only tests (CUDA graphs train like eager, augmentation
# on the device matches the loader's); check then trains the demo config with and without
# CUDA graphs (speed_check.py): the graphs may change the speed, not the result.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back}"
mode=${1:?mode: bench or speed}
log=$OUT/log.txt

py=${PYTHON:-python3}
if ! $py -c "import albumentations, jsonargparse" 2>/dev/null; then  # not in the image
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
# No .git travels: name the commit the tree came from (device_prepare.sh writes it).
[ -f .device-data/COMMIT ] && export BENCH_COMMIT=$(cat .device-data/COMMIT)

nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>&1 | tee -a "$log"
$py -c "import torch, lightning, timm, albumentations, jsonargparse, torchmetrics
print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$log" || exit 1
quiet() { grep --line-buffered -v "Tip\|TPU available\|GPU available\|LOCAL_RANK"; }
gpu_tests() {  # CUDA graphs train like eager; augmentation on the device matches the loader's
    echo "== GPU-only tests" | tee -a "$log"
    timeout -k 5 120 $py -m pytest -q -p no:cacheprovider tests/test_speed_levers.py \
        tests/test_data_device_augment.py -k "cuda or gpu or device" 2>&1 | tail -15 | tee -a "$log"
    return "${PIPESTATUS[0]}"
}

case $mode in
bench)
    dataset=${2:?dataset: busi or ddti}; budget=${3:-gpu}; parallel=${4:-9}; seconds=${5:-540}
    work=/tmp/bench-work
    graphs=()
    if [ "${6:-}" = graphs ]; then
        start=$SECONDS
        if gpu_tests; then graphs=(--cuda-graphs); else echo "== eager: GPU tests failed" | tee -a "$log"; fi
        seconds=$((seconds - (SECONDS - start)))
    fi
    # Checkpoints stay in $work (too big to come back); results and run records come back.
    timeout -k 10 "$seconds" $py benchmarks/run.py --dataset "$dataset" --budget "$budget" \
        --data-root ".device-data/$dataset" --work "$work" --out "$OUT/results" \
        --parallel "$parallel" --no-readme "${graphs[@]}" ${ROWS:+--rows $ROWS} ${BENCH_ARGS:-} 2>&1 \
        | quiet | tee -a "$log"
    echo "== run.py exit ${PIPESTATUS[0]}; tables from the runs that finished" | tee -a "$log"
    $py benchmarks/run.py --dataset "$dataset" --budget "$budget" --work "$work" \
        --out "$OUT/results" --report-only --no-readme ${BENCH_ARGS:-} 2>&1 | quiet | tail -5 | tee -a "$log"
    (cd "$work" && find . -name "*.json" -o -name "log.txt" -o -name "metrics.csv") \
        | while read -r f; do mkdir -p "$OUT/runs/$(dirname "$f")"; cp "$work/$f" "$OUT/runs/$f"; done
    ;;
speed|check)
    gpu_tests || echo "== GPU-only tests FAILED" | tee -a "$log"
    ;;&
check)
    seconds=${2:-240}
    timeout -k 5 "$seconds" $py benchmarks/speed_check.py --device cuda --parallel 8 \
        --runs "fused AdamW" "CUDA graphs" --out "$OUT/speed-check-h200-graphs.md" \
        2>&1 | quiet | tee -a "$log"
    ;;
speed)
    seconds=${2:-330}
    # Real BUSI when the shrunk copy came along, else synthetic images of the same count.
    S="$py benchmarks/speed.py --device cuda --epochs 2 --rounds 1 --busi-root .device-data/busi"
    echo "== speed: CUDA graphs + augmentation on the device" | tee -a "$log"
    timeout -k 5 $((seconds * 2 / 3)) $S --cuda-graph --augment-on-device --worker-timeout 80 \
        --variants malunet unext caw-finetune caw-cached \
        --out "$OUT/speed-h200-graphs-augment.md" 2>&1 | quiet | tee -a "$log"
    if [ "${3:-}" = host-guard ]; then
        echo "== speed: the non-finite guard on the host (a sync per step)" | tee -a "$log"
        timeout -k 5 $((seconds / 3)) $S --cuda-graph --augment-on-device --worker-timeout 80 \
            --host-guard --variants malunet caw-finetune \
            --out "$OUT/speed-h200-host-guard.md" 2>&1 | quiet | tee -a "$log"
    else
        echo "== speed: three runs sharing the GPU" | tee -a "$log"
        timeout -k 5 $((seconds / 3)) $S --cuda-graph --augment-on-device --worker-timeout 80 \
            --rounds 0 --share 3 --variants malunet \
            --out "$OUT/speed-h200-share3.md" 2>&1 | quiet | tee -a "$log"
    fi
    ;;
*)
    echo "unknown mode $mode (bench, speed or check)" >&2; exit 2 ;;
esac
ls -la "$OUT" | tee -a "$log"
