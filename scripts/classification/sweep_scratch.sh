#!/usr/bin/env bash
# A small sweep of the values the early-instance-filtering / error-map-pruning paper does not give,
# on LeNet-5 trained from scratch on Fashion-MNIST (the protocol of scratch.sh): EIF's target
# High ratio R_set and entropy threshold, EMP's kept share alpha and score weights (g1, g2).
# Run names say the values; a finished run is not repeated (FORCE=1 re-runs everything).
# Usage: bash scripts/classification/sweep_scratch.sh [extra LightningCLI args]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
ARCH=${ARCH:-lenet}
C=configs/classification

done_already() { [[ -z "${FORCE:-}" && -f "$RUNS/sweep/$ARCH/fmnist/$1/best.ckpt" ]]; }

common=(--config "$C/base.yaml" --config "$C/models/$ARCH.yaml" --config "$C/datasets/fmnist.yaml"
        --config "$C/schedules/fmnist_scratch.yaml" --runs_dir "$RUNS" --table sweep)
for ratio in 0.1 0.3; do
  for entropy in 0.3 0.5 0.6; do
    name="eif-R$ratio-H$entropy"
    done_already "$name" || "$PY" -m classification fit "${common[@]}" --config "$C/methods/eif.yaml" \
      --model.method.target_ratio "$ratio" --model.method.entropy_threshold "$entropy" --run_name "$name" "$@"
  done
done
for alpha in 0.25 0.5 0.75; do
  for weights in "0.0 1.0" "1.0 0.0"; do
    read -r g1 g2 <<< "$weights"
    name="emp-a$alpha-g$g1,$g2"
    done_already "$name" || "$PY" -m classification fit "${common[@]}" --config "$C/methods/emp.yaml" \
      --model.method.alpha "$alpha" --model.method.g1 "$g1" --model.method.g2 "$g2" --run_name "$name" "$@"
  done
done
"$PY" -m classification.report "$RUNS/sweep"
