#!/usr/bin/env bash
# Gradient filtering next to the other on-device training methods, on the demo's protocol
# (Fashion-MNIST at 96x96, FedAvg partitions, pretrain on partition 0, fine-tune on partition 1
# with the recipe of configs/classification/schedules/fmnist_finetune.yaml), for ResNet-18 and
# MobileNetV2: vanilla BP and gradient filters R2 / R4 on the last 2 and 4 layers, sparse update
# at two memory budgets (half / all input channels of the last 2 convs' weights, biases of the
# last 8 convs), TinyTL, and error-map pruning / early instance filtering on the last 4 layers (EMP
# at alpha 0.5; EIF, a slim LeNet filter seeing 32x32 images, in front of vanilla BP and of EMP + R2).
# Prints one table (accuracy, backward FLOPs, activation memory from
# the cost model and measured in a real step) and plots accuracy against FLOPs and memory.
# A stage whose best.ckpt exists is not run again (FORCE=1 re-runs everything).
# Usage: bash scripts/classification/compare.sh [extra LightningCLI args for every stage]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
ARCHS=${ARCHS:-"resnet18 mobilenet_v2"}
C=configs/classification

done_already() { [[ -z "${FORCE:-}" && -f "$RUNS/compare/$1/fmnist/$2/best.ckpt" ]]; }

for arch in $ARCHS; do
  common=(--config "$C/base.yaml" --config "$C/models/$arch.yaml" --config "$C/datasets/fmnist.yaml"
          --runs_dir "$RUNS" --table compare)
  done_already "$arch" pretrain || "$PY" -m classification fit "${common[@]}" --config "$C/schedules/fmnist_pretrain.yaml" "$@"
  pretrained="$RUNS/compare/$arch/fmnist/pretrain/best.ckpt"
  finetune=("${common[@]}" --config "$C/schedules/fmnist_finetune.yaml" --model.init_from "$pretrained")
  for layers in 2 4; do
    for method in vanilla r2 r4; do
      tag=$([[ $method == vanilla ]] && echo "vanilla-${layers}L" || echo "R${method#r}-${layers}L")
      done_already "$arch" "$tag" || "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/$method.yaml" \
        --model.method.layers "$layers" "$@"
    done
  done
  for ratio in 0.5 1.0; do
    tag=$([[ $ratio == 1.0 ]] && echo "sparse-b8-w2" || echo "sparse-b8-w2-r$ratio")
    done_already "$arch" "$tag" || "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/sparse_update.yaml" \
      --model.method.weight_update_ratio "$ratio" "$@"
  done
  done_already "$arch" tinytl || "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/tinytl.yaml" "$@"
  done_already "$arch" emp0.5-4L || "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/emp.yaml" \
    --model.method.layers 4 "$@"
  eif=(--config "$C/methods/eif.yaml" --model.method.filter_net slim_lenet --model.method.filter_input_size 32)
  done_already "$arch" eif0.3-slim_lenet-f32-vanilla-4L || "$PY" -m classification fit "${finetune[@]}" "${eif[@]}" \
    --model.method.method "{class_path: Vanilla, init_args: {layers: 4}}" "$@"
  done_already "$arch" eif0.3-slim_lenet-f32-emp0.5-4L-R2 || "$PY" -m classification fit "${finetune[@]}" "${eif[@]}" \
    --model.method.method "{class_path: ErrorMapPruning, init_args: {layers: 4, alpha: 0.5, patch_size: 2}}" "$@"
done
"$PY" -m classification.report "$RUNS/compare"
echo "TensorBoard: tensorboard --logdir $RUNS/compare"
