#!/usr/bin/env bash
# Train every Entropic Student of the rate-accuracy curve (shared base once, two stages per beta) and publish them.
#   bench/train_entropic.sh DATASET_DIR [extra edgesplit train flags, e.g. --resume]
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1; shift
.venv/bin/edgesplit train configs/entropic.yaml --out runs/entropic --data "$data" --no-progress \
    --sweep beta=2.5e-4,1.6e-4,1e-4,4e-5,1.6e-5,6.4e-6 "$@"
.venv/bin/edgesplit publish runs/entropic --name "entropic_b{value}" --data "$data"
