#!/usr/bin/env bash
# A language model's loss landscape with nothing downloaded: train the tiny character-level GPT-2
# of examples/tiny_lm on the dataset descriptions bundled with scikit-learn (about a minute on
# 2 CPU cores), then compute its 2D loss surface around the trained weights, moving only the
# second transformer block (--include_params 'transformer.h.1.*'), twice: with the suite's
# causal_lm loss (mean token cross-entropy, and perplexity) and with a custom objective
# (examples/tiny_lm/objectives.py) along the same directions; then draw the first.
# Each command is printed first, so this file doubles as a worked example.
# Usage: bash examples/tiny_lm/run_example.sh [OUT_FOLDER]   (default examples/tiny_lm/out)
# Smaller runs: STEPS (training steps, default train.py's), GRID (points per axis, default 11).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-$ROOT/examples/tiny_lm/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$ROOT"   # `python -m examples.tiny_lm.train` and the factories import from the repository root
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-}
GRID=${GRID:-11}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
run() { printf '\n+ %s\n' "$*"; "$@"; }

# Only what this script writes is removed, so a rerun starts from scratch.
rm -rf "$OUT/trained" "$OUT"/surface_*

# 1. Train: writes $OUT/trained/model.t7 = {'state_dict': ..., 'step': N}.
run "$PY" -m examples.tiny_lm.train --save "$OUT/trained" --threads "$THREADS" ${STEPS:+--steps "$STEPS"}
MODEL="$OUT/trained/model.t7"

# The model and its data as the suite's factories; --datapath is ignored by the data factory
# (the text ships with scikit-learn). Directions: filter-normalized, zero for biases and
# LayerNorm (biasbn), and zero outside the second block.
COMMON=(--model examples.tiny_lm.model:tiny_gpt --dataset examples.tiny_lm.data:char_text
        --model_file "$MODEL" --batch_size 64 --threads "$THREADS")
GRID_ARGS=(--x=-1:1:"$GRID" --y=-1:1:"$GRID")

# 2. The surface with the built-in causal_lm loss: train_loss (mean cross-entropy over every
#    predicted token, nats) and train_perplexity (its exp).
run "$PY" plot_surface.py "${COMMON[@]}" "${GRID_ARGS[@]}" --loss_name causal_lm \
    --include_params 'transformer.h.1.*' --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn \
    --surf_file "$OUT/surface_causal_lm.h5"
DIR_FILE=$("$PY" -c 'import sys; from losslandscape.io import hdf5_layout; print(hdf5_layout.read_surface(sys.argv[1]).dir_file)' \
    "$OUT/surface_causal_lm.h5")
printf '\ndirection file: %s\n' "$DIR_FILE"

# 3. The same grid along the same directions with a custom objective, computed from the logits:
#    the same train_loss, plus train_acc (top-1 next-character accuracy, %).
run "$PY" plot_surface.py "${COMMON[@]}" "${GRID_ARGS[@]}" \
    --loss_name examples.tiny_lm.objectives:token_cross_entropy --dir_file "$DIR_FILE" \
    --surf_file "$OUT/surface_token_cross_entropy.h5"

# 4. Contours, filled contours, heat map and 3D surface of the mean token cross-entropy.
run "$PY" plot_2D.py --surf_file "$OUT/surface_causal_lm.h5" --surf_name train_loss --vmin 0.5 --vmax 8 --vlevel 0.5

printf '\nPictures:\n'
find "$OUT" -name '*.png' | sort
