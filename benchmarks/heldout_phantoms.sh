#!/usr/bin/env bash
# Detection quality of a model on freshly generated full-size phantoms whose seeds were never used in training.
# Usage: benchmarks/heldout_phantoms.sh [N=20] [SEED=777000] [MODEL=lung-nodule] [DIR=/tmp/meddet-heldout]
# Prints the evaluation table (CPM, FROC points with bootstrap CIs, sensitivity by size, Dice, HD95, latency) and
# leaves report.html / metrics.json in DIR/report. The bundled model's card quotes a run of this script.
set -euo pipefail
n="${1:-20}"; seed="${2:-777000}"; model="${3:-lung-nodule}"; dir="${4:-/tmp/meddet-heldout}"
cd "$(dirname "$0")/.."
rm -rf "$dir"
.venv/bin/meddet phantom --out "$dir/data" --n "$n" --seed "$seed"
.venv/bin/meddet predict "$dir/data/dicom" -o "$dir/pred" --model "$model"
.venv/bin/meddet evaluate --pred "$dir/pred" --truth "$dir/data" --out "$dir/report"
