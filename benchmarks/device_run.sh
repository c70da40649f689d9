#!/usr/bin/env bash
# One prepared call on the lent GPU machine (issues 5 and 6). Everything it writes goes
# under $OUT, which comes back; whatever finished before a time limit comes back too.
#
# Here, once (pip works here, not there): bash benchmarks/device_prepare.sh
# Then one device call, carrying the wheels and the shrunk data. A session's 15 minutes of
# device time hold one full call: the GPU tests, the speed table and a short benchmark:
#   run(command="bash benchmarks/device_run.sh all busi 560", timeout_s=600,
#       carry=[".whl", ".device-data/busi", ".device-data/COMMIT"])
# or one of the single-purpose calls:
#   run(command="bash benchmarks/device_run.sh bench busi", timeout_s=600,
#       carry=[".whl", ".device-data/busi", ".device-data/COMMIT"])
#   run(command="bash benchmarks/device_run.sh speed", timeout_s=400,
#       carry=[".whl", ".device-data/busi", ".device-data/COMMIT"])
#   run(command="bash benchmarks/device_run.sh check", timeout_s=300, carry=[".whl"])
# Give a call's timeout_s at least SECONDS + 40: the benchmark's tables are written and
# packed after run.py stops, so a call cut off before that returns no runs at all.
# Back here,
# unpack <files_at>/bench.tgz, copy its results/* and the speed tables to benchmarks/results/
# (the tables name the device's hardware) and regenerate the README section:
#   python -c "import sys; sys.path.insert(0, 'benchmarks'); import report; report.update_readme()"
# The per-run records come back in bench.tgz under runs/<dataset>-<budget>[-<options>]/
# (checkpoints stay there).
#
# Usage: device_run.sh all [DATASETS] [SECONDS] [BUDGET]   (default busi 560 gpu: the GPU
#                                     tests, then run.py's BUDGET rows, 9 runs at once,
#                                     augmenting on the device, then in the last
#                                     SPEED_SECONDS (190; 0 skips it) speed.py's table with
#                                     augmentation on the device; both with CUDA
#                                     graphs if the tests passed; BENCH_ARGS="--epochs 60":
#                                     a longer schedule, in a table of its own; DATASETS
#                                     busi,ddti: DDTI in what BUSI leaves, both data sets
#                                     carried, 59 MiB with the wheels)
#        device_run.sh bench DATASET [BUDGET] [PARALLEL] [SECONDS] [graphs]
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
mode=${1:?mode: all, bench, speed or check}
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

# run.py for DATASET BUDGET with PARALLEL runs at once for at most SECONDS, then the tables
# of the runs that finished. Results and run records (of every data set so far) come back
# packed in one file ($OUT/bench.tgz: the call returns at most 8 files, 2 folders deep);
# checkpoints stay.
bench() {
    local dataset=$1 budget=$2 parallel=$3 seconds=$4; shift 4
    # One folder per data set, budget and settings (row names repeat; run.py refuses a run
    # fitted with other settings): calls with other options on one warm machine never share.
    local settings
    settings=$(echo "$* ${BENCH_ARGS:-}" | tr -cs 'A-Za-z0-9.=' '_' | sed 's/^_*//; s/_*$//')
    local name=$dataset-$budget${settings:+-$settings}
    local work=/tmp/bench-work/$name
    # The committed tables' runs stay in the new tables where this call does not rerun them.
    mkdir -p /tmp/bench-out/results
    cp -n benchmarks/results/"$dataset-$budget"*.json /tmp/bench-out/results/ 2>/dev/null
    timeout -k 10 "$seconds" $py benchmarks/run.py --dataset "$dataset" --budget "$budget" \
        --data-root ".device-data/$dataset" --work "$work" --out /tmp/bench-out/results \
        --parallel "$parallel" --no-readme "$@" ${ROWS:+--rows $ROWS} ${BENCH_ARGS:-} 2>&1 \
        | quiet | tee -a "$log"
    echo "== run.py exit ${PIPESTATUS[0]}; tables from the runs that finished" | tee -a "$log"
    $py benchmarks/run.py --dataset "$dataset" --budget "$budget" --work "$work" \
        --out /tmp/bench-out/results --report-only --no-readme ${BENCH_ARGS:-} 2>&1 \
        | quiet | tail -5 | tee -a "$log"
    (cd "$work" && find . -name "*.json" -o -name "log.txt" -o -name "metrics.csv") \
        | while read -r f; do
            mkdir -p "/tmp/bench-out/runs/$name/$(dirname "$f")"
            cp "$work/$f" "/tmp/bench-out/runs/$name/$f"
        done
    tar -czf "$OUT/bench.tgz" -C /tmp/bench-out . && echo "== packed $OUT/bench.tgz" | tee -a "$log"
}
# speed.py on the GPU with augmentation on the device, and CUDA graphs when the GPU tests
# passed (speed_graphs), for at most SECONDS (the table is rewritten after every run, so a
# time limit loses only the run it stops).
speed_graphs=()
speed_name() {  # the table's file name says whether CUDA graphs were on
    if [ ${#speed_graphs[@]} -gt 0 ]; then echo speed-h200-graphs-augment; else echo speed-h200-eager-augment; fi
}
speed() {
    local seconds=$1 name=$2; shift 2
    timeout -k 5 "$seconds" $py benchmarks/speed.py --device cuda --epochs 2 --rounds 1 \
        --busi-root .device-data/busi "${speed_graphs[@]}" --augment-on-device --worker-timeout 80 \
        --out "$OUT/$name.md" "$@" ${SPEED_ARGS:-} 2>&1 | quiet | tee -a "$log"
}

case $mode in
bench)
    dataset=${2:?dataset: busi or ddti}; budget=${3:-gpu}; parallel=${4:-9}; seconds=${5:-540}
    graphs=()
    if [ "${6:-}" = graphs ]; then
        start=$SECONDS
        if gpu_tests; then graphs=(--cuda-graphs); else echo "== eager: GPU tests failed" | tee -a "$log"; fi
        seconds=$((seconds - (SECONDS - start)))
    fi
    bench "$dataset" "$budget" "$parallel" "$seconds" "${graphs[@]}"
    ;;
all)
    # Everything one session's device time allows in one call: the GPU-only tests, the
    # benchmark, then the speed table in the last SPEED_SECONDS of SECONDS (counted from the
    # start of this script, the install included). The benchmark goes first: its runs are
    # the scarcer result, and the speed table keeps every run finished before a time limit.
    datasets=${2:-busi}; total=${3:-560}; budget=${4:-gpu}; speed_seconds=${SPEED_SECONDS:-190}
    graphs=()
    if gpu_tests; then
        graphs=(--cuda-graphs) speed_graphs=(--cuda-graph)
    else
        echo "== eager: GPU tests failed" | tee -a "$log"
    fi
    for dataset in ${datasets//,/ }; do  # busi,ddti: the second in what the first leaves
        left=$((total - SECONDS - 25 - speed_seconds))  # 25 s to write the tables and pack them
        echo "== bench $dataset: $left s left" | tee -a "$log"
        if [ "$left" -lt 60 ]; then break; fi
        bench "$dataset" "$budget" 9 "$left" --augment-on-device "${graphs[@]}"
    done
    if [ "$speed_seconds" -gt 0 ]; then  # SPEED_SECONDS=0: the benchmark alone
        pkill -f "benchmarks.worker" && sleep 3  # timed alone on the GPU
        echo "== speed (${SECONDS} s in)" | tee -a "$log"
        # SPEED_NAME, SPEED_VARIANTS and SPEED_ARGS (e.g. "--precision bf16-mixed
        # --channels-last") pick another table.
        speed $((total - SECONDS)) "${SPEED_NAME:-$(speed_name)}" \
            --variants ${SPEED_VARIANTS:-malunet unext classelevate caw-finetune caw-decoder caw-cached}
    fi
    ;;
speed|check)
    if gpu_tests; then speed_graphs=(--cuda-graph); else echo "== GPU-only tests FAILED" | tee -a "$log"; fi
    ;;&
check)
    seconds=${2:-240}
    timeout -k 5 "$seconds" $py benchmarks/speed_check.py --device cuda --parallel 8 \
        --runs "fused AdamW" "CUDA graphs" bf16 --out "$OUT/speed-check-h200-gpu-levers.md" \
        2>&1 | quiet | tee -a "$log"
    ;;
speed)
    seconds=${2:-330}
    echo "== speed: augmentation on the device, ${speed_graphs[*]:-eager}" | tee -a "$log"
    speed $((seconds * 2 / 3)) "$(speed_name)" --variants malunet unext caw-finetune caw-decoder caw-cached
    if [ "${3:-}" = host-guard ]; then
        echo "== speed: the non-finite guard on the host (a sync per step)" | tee -a "$log"
        speed $((seconds / 3)) speed-h200-host-guard --host-guard --variants malunet caw-finetune
    else
        echo "== speed: three runs sharing the GPU" | tee -a "$log"
        speed $((seconds / 3)) speed-h200-share3 --rounds 0 --share 3 --variants malunet
    fi
    ;;
*)
    echo "unknown mode $mode (all, bench, speed or check)" >&2; exit 2 ;;
esac
ls -la "$OUT" | tee -a "$log"
