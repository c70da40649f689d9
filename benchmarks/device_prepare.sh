#!/usr/bin/env bash
# Run here (not on the device) before a device call: fetch the wheels of the packages the
# GPU machine's image lacks into .whl/, and write the real data sets shrunk to 256 px into
# .device-data/ (see shrink_data.py). Both folders are ignored by git and travel only when
# a call names them in `carry` (64 MiB in all with the working tree; about 55 MiB here).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
data=${DATA:-../shared/data}

# The image has torch, lightning, timm, torchmetrics; not these (Python 3.12 there).
wheels=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 simsimd==6.5.16 stringzilla==5.3.2
        jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
        pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 pygments==2.21.0)
mkdir -p .whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"

for dataset in busi ddti; do
    if [ -d "$data/$dataset" ] && [ ! -d ".device-data/$dataset" ]; then
        "$python" benchmarks/shrink_data.py "$dataset" "$data/$dataset" ".device-data/$dataset" --size 256
    fi
done
# No .git travels to the device; "-dirty" where the code the runs use has changes.
rev=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain -- semiseg_caw configs benchmarks ':!benchmarks/results')" ]; then
    rev=$rev-dirty
fi
echo "$rev" > .device-data/COMMIT
du -sh .whl .device-data
