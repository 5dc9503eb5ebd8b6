#!/usr/bin/env bash
# The suite's main job on real data that needs no download (scikit-learn's 8x8 digits):
# train two small CNNs, then draw a 2D filter-normalized surface, the 1D interpolation between
# the two solutions and a trained low-loss curve beside it, and the optimizer's path on its PCA
# plane. Each command is printed first, so this file doubles as a worked example.
# Usage: bash demo.sh [OUT_FOLDER]
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-demo_out}
EPOCHS=8
COMMON=(--dataset digits --model cnn_bn)
run() { printf '\n+ %s\n' "$*"; "$@"; }

rm -rf "$OUT" && mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 1. Two trainings that differ only in their seed (--idx names the folder apart).
run "$PY" -m cifar10.main "${COMMON[@]}" --epochs $EPOCHS --batch_size 64 --lr 0.05 --save "$OUT/trained"
run "$PY" -m cifar10.main "${COMMON[@]}" --epochs $EPOCHS --batch_size 64 --lr 0.05 --save "$OUT/trained" \
    --rand_seed 1 --idx 1
RUN_A=$(ls -d "$OUT"/trained/*_save_epoch=1 | head -n 1)
RUN_B=$(ls -d "$OUT"/trained/*_idx=1 | head -n 1)
MODEL_A="$RUN_A/model_$EPOCHS.t7"
MODEL_B="$RUN_B/model_$EPOCHS.t7"

# 2. The loss around model A along two filter-normalized random directions.
run "$PY" plot_surface.py "${COMMON[@]}" --model_file "$MODEL_A" --x=-1:1:21 --y=-1:1:21 \
    --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn --eval_test --plot --vmax 5 --vlevel 0.25
SURF_2D="$MODEL_A"_weights_xignore=biasbn_xnorm=filter_yignore=biasbn_ynorm=filter.h5_[-1.0,1.0,21]x[-1.0,1.0,21].h5
run "$PY" plot_2D.py --surf_file "$SURF_2D" --html --vmax 5 --vlevel 0.25
run "$PY" h52vtp.py --surf_file "$SURF_2D" --zmax 10 --log

# 3. What lies between the two solutions: x = 0 is model A, x = 1 is model B.
# --dir_type states moves the BatchNorm statistics too, so x = 1 is model B exactly.
run "$PY" plot_surface.py "${COMMON[@]}" --model_file "$MODEL_A" --model_file2 "$MODEL_B" --x=-0.5:1.5:41 \
    --dir_type states --eval_test --plot --loss_max 3

# 3b. Beyond the straight line (mode connectivity, Garipov et al. 2018): a Bezier curve from A to B
# whose one bend is trained, ends fixed, to keep the loss low all along. Both paths are evaluated
# with BatchNorm statistics recomputed at every t, so they differ in their weights alone.
CURVE="$OUT/curve_bezier.h5"
run "$PY" -m losslandscape.train_curve "${COMMON[@]}" --model_file "$MODEL_A" --model_file2 "$MODEL_B" --curve bezier \
    --num_bends 3 --epochs 10 --lr 0.05 --batch_size 64 --curve_file "$CURVE"
run "$PY" plot_surface.py "${COMMON[@]}" --curve_file "$CURVE" --x=0:1:21 --eval_test --surf_file "$OUT/curve_t.h5"
run "$PY" plot_surface.py "${COMMON[@]}" --model_file "$MODEL_A" --model_file2 "$MODEL_B" --x=0:1:21 \
    --recompute_bn --eval_test --surf_file "$OUT/line_t.h5"
run "$PY" plot_1D.py --surf_file "$OUT/curve_t.h5" --compare "$OUT/line_t.h5" --loss_max 1.5
# The plane through A, B and the curve's bend holds the whole curve: drawn on its contours.
run "$PY" plot_surface.py "${COMMON[@]}" --model_file "$MODEL_A" --model_file2 "$MODEL_B" --model_file3 "$CURVE" \
    --x=-0.2:1.2:15 --y=-0.2:1.2:15 --recompute_bn --surf_file "$OUT/curve_plane.h5" --plot \
    --vmin 0.05 --vmax 2 --vlevel 0.15

# 4. The path the optimizer took, on the plane of the checkpoints' two principal directions.
run "$PY" plot_trajectory.py "${COMMON[@]}" --model_folder "$RUN_A" --max_epoch $EPOCHS --ignore biasbn
PCA_DIR="$RUN_A/PCA_weights_ignore=biasbn_save_epoch=1"
run "$PY" plot_surface.py "${COMMON[@]}" --model_file "$MODEL_A" --dir_file "$PCA_DIR/directions.h5" \
    --x=-12:4:21 --y=-4:4:21 --proj_file "$PCA_DIR/directions.h5_proj_cos.h5" --plot --vmax 5 --vlevel 0.25

printf '\nPictures:\n'
find "$OUT" -name '*.png' -o -name '*.html' -o -name '*.vtp' | sort
