#!/usr/bin/env bash
# Training from scratch on Fashion-MNIST at 28x28 (configs/classification/schedules/fmnist_scratch.yaml:
# 20,000 images, 5 epochs, SGD), the setting of error-map pruning (Wu et al., TCAD 2020), for LeNet-5
# and ResNet-20: SGD on every layer, error-map pruning keeping half of every conv's error-map
# channels, the same with gradient filters R2 on the kept channels, gradient filters R2 alone, and
# early instance filtering in front of SGD, of EMP and of EMP + R2 (for LeNet-5 also with the filter
# network seeing 14x14 images: at 28x28 it costs half of LeNet-5's own training).
# The report's *saved %* is the training computation (forward + backward of the instances trained on,
# plus the filter network's) saved against SGD on every layer; *s / epoch* the measured step time.
# The paper (ResNet-110, CIFAR-10): EMP alone saves 35.56 % of the backward with no loss, 62.22 % at
# -0.72 points; EIF alone 63.50 % of the computation, EIF + EMP 67.84 % at +0.09 points. A stage whose best.ckpt exists is not run again (FORCE=1 re-runs everything).
# Usage: bash scripts/classification/scratch.sh [extra LightningCLI args]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
ARCHS=${ARCHS:-"lenet resnet20"}
C=configs/classification

done_already() { [[ -z "${FORCE:-}" && -f "$RUNS/scratch/$1/fmnist/$2/best.ckpt" ]]; }

for arch in $ARCHS; do
  common=(--config "$C/base.yaml" --config "$C/models/$arch.yaml" --config "$C/datasets/fmnist.yaml"
          --config "$C/schedules/fmnist_scratch.yaml" --runs_dir "$RUNS" --table scratch)
  done_already "$arch" vanilla-all || "$PY" -m classification fit "${common[@]}" --config "$C/methods/vanilla.yaml" \
    --model.method.layers all "$@"
  done_already "$arch" emp0.5-all || "$PY" -m classification fit "${common[@]}" --config "$C/methods/emp.yaml" "$@"
  done_already "$arch" emp0.5-all-R2 || "$PY" -m classification fit "${common[@]}" --config "$C/methods/emp.yaml" \
    --model.method.patch_size 2 "$@"
  done_already "$arch" R2-all || "$PY" -m classification fit "${common[@]}" --config "$C/methods/r2.yaml" \
    --model.method.layers all "$@"
  done_already "$arch" eif0.3-vanilla-all || "$PY" -m classification fit "${common[@]}" --config "$C/methods/eif.yaml" "$@"
  if [[ $arch == lenet ]]; then
    done_already "$arch" eif0.3-f14-vanilla-all || "$PY" -m classification fit "${common[@]}" \
      --config "$C/methods/eif.yaml" --model.method.filter_input_size 14 "$@"
  fi
  for filt in "" ", patch_size: 2"; do
    tag="eif0.3-emp0.5-all${filt:+-R2}"
    done_already "$arch" "$tag" || "$PY" -m classification fit "${common[@]}" --config "$C/methods/eif.yaml" \
      --model.method.method "{class_path: ErrorMapPruning, init_args: {layers: all, alpha: 0.5$filt}}" "$@"
  done
done
"$PY" -m classification.report "$RUNS/scratch"
echo "TensorBoard: tensorboard --logdir $RUNS/scratch"
