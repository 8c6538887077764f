#!/usr/bin/env bash
# Train and publish the quantized/binarized students in order: FP32 (distilled from the teacher), then INT8 and
# INT4 QAT from the FP32 student (their `init:`), and the three binary students in two steps each (binary_X_step1:
# binary activations with real weights from the FP32 student; binary_X: from step 1, weights binary too; only step 2
# is published). A finished run (metrics.json present) is skipped, an interrupted one resumed.
#   bench/train_students.sh DATASET_DIR [THREADS] [VARIANT ...]     e.g. bench/train_students.sh ../data/train 1
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1; threads=${2:-2}; shift $(( $# >= 2 ? 2 : $# ))
variants=${*:-fp32 int8 int4 binary_ste_step1 binary_ste binary_reste_step1 binary_reste binary_biper_step1 binary_biper}
es=.venv/bin/edgesplit
for v in $variants; do
    run=runs/student_$v
    if [ ! -f "$run/metrics.json" ]; then
        resume=; [ -f "$run/state.safetensors" ] && resume=--resume
        $es train "configs/student_$v.yaml" --out "$run" --data "$data" --threads "$threads" --no-progress $resume
    fi
    if [[ $v == *_step1 ]]; then  # kept beside the step-2 weights it initialised
        cp "$run/config.yaml" "samples/weights/student_${v%_step1}.step1.yaml"
        cp "$run/log.jsonl" "samples/weights/student_${v%_step1}.step1.log.jsonl"
        continue
    fi
    .venv/bin/python bench/publish.py "$run" --name "student_$v" --data "$data" > "$run/publish.json"
done
