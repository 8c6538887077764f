#!/usr/bin/env bash
# Train and publish the quantized/binarized students in order: FP32 (distilled from the teacher), then INT8 and
# INT4 QAT from the FP32 student (their `init:`), and the three binary students (two stages each in one recipe).
# A finished run (metrics.json present) is skipped, an interrupted one resumed.
#   bench/train_students.sh DATASET_DIR [VARIANT ...]     e.g. bench/train_students.sh ../data/train int8
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1; shift
variants=${*:-fp32 int8 int4 binary_ste binary_reste binary_biper}
for v in $variants; do
    run=runs/student_$v
    .venv/bin/edgesplit train "configs/student_$v.yaml" --out "$run" --data "$data" --no-progress --resume
    .venv/bin/edgesplit publish "$run" --name "student_$v" --data "$data"
done
