#!/usr/bin/env bash
# Train and publish one Entropic Student: the shared base (configs/entropic_base.yaml, then
# configs/entropic_base_long.yaml and configs/entropic_base_long2.yaml; once, later calls reuse
# runs/entropic_base_long2), the beta's stage 1 and stage 2, then fp16 student-only weights under samples/weights/.
#   bench/train_entropic.sh BETA_TOKEN DATASET_DIR [THREADS]     e.g. bench/train_entropic.sh b1e-4 ../data/train 1
# Two betas may run at once only after the base has finished.
set -euo pipefail
cd "$(dirname "$0")/.."
beta=$1; data=$2; threads=${3:-2}
py=.venv/bin/python
es=.venv/bin/edgesplit
resume() { [ -f "$1/state.safetensors" ] && echo --resume || true; }
if [ ! -f runs/entropic_base/metrics.json ]; then
    $es train configs/entropic_base.yaml --out runs/entropic_base --data "$data" --threads "$threads" --no-progress \
        $(resume runs/entropic_base)
fi
for base in entropic_base_long entropic_base_long2; do
    if [ ! -f "runs/$base/metrics.json" ]; then
        $es train "configs/$base.yaml" --out "runs/$base" --data "$data" --threads "$threads" --no-progress \
            $(resume "runs/$base")
    fi
done
$es train "configs/entropic_${beta}_stage1.yaml" --out "runs/entropic_${beta}_stage1" --data "$data" \
    --threads "$threads" --no-progress $(resume "runs/entropic_${beta}_stage1")
$es train "configs/entropic_${beta}_stage2.yaml" --out "runs/entropic_${beta}_stage2" --data "$data" \
    --threads "$threads" --no-progress $(resume "runs/entropic_${beta}_stage2")
$py bench/publish.py "runs/entropic_${beta}_stage2" --name "entropic_${beta}" --data "$data"
cp "runs/entropic_${beta}_stage1/config.yaml" "samples/weights/entropic_${beta}.stage1.yaml"
cp "runs/entropic_${beta}_stage1/log.jsonl" "samples/weights/entropic_${beta}.stage1.log.jsonl"
