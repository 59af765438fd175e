#!/usr/bin/env bash
# A sweep of the values the early-instance-filtering / error-map-pruning paper does not give, on a
# network trained from scratch on Fashion-MNIST (the protocol of scratch.sh), one value at a time
# around the defaults (configs/classification/methods/eif.yaml, emp.yaml), every point with each seed:
#   EIF: target High ratio R_set, entropy threshold, threshold factors a1/a2, window n, initial T_l;
#   EMP: kept share alpha, score weights g1 (filter norm) / g2 (error-map norm);
#   and SGD on every layer as the reference.
# Run names say the values and the seed (<name>-s<seed>); a finished run is not repeated (FORCE=1
# re-runs everything). The report averages over seeds.
# Usage: ARCH=resnet20 SEEDS="0 1" bash scripts/classification/sweep_scratch.sh [extra LightningCLI args]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
ARCH=${ARCH:-resnet20}
SEEDS=${SEEDS:-"0 1"}
C=configs/classification

done_already() { [[ -z "${FORCE:-}" && -f "$RUNS/sweep/$ARCH/fmnist/$1/best.ckpt" ]]; }

common=(--config "$C/base.yaml" --config "$C/models/$ARCH.yaml" --config "$C/datasets/fmnist.yaml"
        --config "$C/schedules/fmnist_scratch.yaml" --runs_dir "$RUNS" --table sweep)
# name and the EIF / EMP overrides of each point (the defaults: eif-default, emp-default)
eif_points=(
  "eif-default|"
  "eif-R0.1|--model.method.target_ratio 0.1"
  "eif-R0.5|--model.method.target_ratio 0.5"
  "eif-H0.4|--model.method.entropy_threshold 0.4"
  "eif-H0.68|--model.method.entropy_threshold 0.68"
  "eif-a1.2,0.8|--model.method.a1 1.2 --model.method.a2 0.8"
  "eif-n50|--model.method.window 50"
  "eif-T0.3|--model.method.initial_threshold 0.3"
  "eif-T3|--model.method.initial_threshold 3.0"
)
emp_points=(
  "emp-default|"
  "emp-a0.25|--model.method.alpha 0.25"
  "emp-a0.75|--model.method.alpha 0.75"
  "emp-g1,0|--model.method.g1 1.0 --model.method.g2 0.0"
  "emp-g1,1|--model.method.g1 1.0 --model.method.g2 1.0"
)
for seed in $SEEDS; do
  name="sgd-s$seed"
  done_already "$name" || "$PY" -m classification fit "${common[@]}" --config "$C/methods/vanilla.yaml" \
    --model.method.layers all --seed_everything "$seed" --run_name "$name" "$@"
  for point in "${eif_points[@]}"; do
    IFS='|' read -r name args <<< "$point"
    # shellcheck disable=SC2086  # args is a list of overrides
    done_already "$name-s$seed" || "$PY" -m classification fit "${common[@]}" --config "$C/methods/eif.yaml" \
      $args --model.method.seed "$seed" --seed_everything "$seed" --run_name "$name-s$seed" "$@"
  done
  for point in "${emp_points[@]}"; do
    IFS='|' read -r name args <<< "$point"
    # shellcheck disable=SC2086
    done_already "$name-s$seed" || "$PY" -m classification fit "${common[@]}" --config "$C/methods/emp.yaml" \
      $args --seed_everything "$seed" --run_name "$name-s$seed" "$@"
  done
done
"$PY" -m classification.report "$RUNS/sweep/$ARCH" --mean-over-seeds
