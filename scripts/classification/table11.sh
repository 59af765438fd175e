#!/usr/bin/env bash
# Table 11 of the paper: CIFAR-10/100 at 224x224, ResNet-18/34. Pretrain on partition 0 (vanilla,
# all layers), then fine-tune the last 1-4 conv layers (+ classifier) on partition 1 with vanilla
# BP and gradient filters R2, R4, R7. Everything lands in runs/table11/<arch>/<dataset>/<method>.
#
# Usage: bash scripts/classification/table11.sh [ARCHS] [DATASETS] [-- extra LightningCLI args]
#   e.g. bash scripts/classification/table11.sh "resnet18" "cifar10" -- --trainer.devices 2 --trainer.strategy ddp
# CIFAR must be under data/ in torchvision's layout (add --data.download true where there is network).
#
# The paper's accuracy (%) for #Layers = 1 / 2 / 3 / 4:
#   ResNet-18 CIFAR-10:  vanilla 91.7/93.6/93.7/94.4  R2 91.5/92.7/92.8/93.9  R4 91.4/92.7/92.8/93.3  R7 91.5/91.5/91.7/92.6
#   ResNet-34 CIFAR-10:  vanilla 94.2/96.6/96.6/96.8  R2 94.2/96.6/96.5/96.6  R4 94.3/96.4/96.4/96.1  R7 94.2/95.8/96.0/96.0
#   ResNet-18 CIFAR-100: vanilla 73.8/77.6/77.6/78.0  R2 73.7/75.6/75.6/76.4  R4 73.7/74.9/74.9/75.2  R7 73.7/74.1/74.1/75.4
#   ResNet-34 CIFAR-100: vanilla 76.9/82.0/82.1/83.0  R2 77.0/81.1/81.1/82.0  R4 76.9/80.4/80.4/80.5  R7 76.9/80.4/80.3/80.3
# and backward FLOPs, e.g. ResNet-18 CIFAR-10 R2: 8.18M / 26.80M / 45.45M / 60.01M (gradfilt.cost reproduces
# every FLOPs cell; the report prints ours next to the accuracy).
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
C=configs/classification
ARCHS=${1:-"resnet18 resnet34"}
DATASETS=${2:-"cifar10 cifar100"}
shift $(( $# < 2 ? $# : 2 ))
[[ "${1:-}" == "--" ]] && shift

for arch in $ARCHS; do
  for dataset in $DATASETS; do
    common=(--config "$C/base.yaml" --config "$C/models/$arch.yaml" --config "$C/datasets/$dataset.yaml"
            --runs_dir "$RUNS" --table table11)
    pretrain_epochs=30; [[ $dataset == cifar100 ]] && pretrain_epochs=50
    "$PY" -m classification fit "${common[@]}" --config "$C/schedules/cifar_pretrain.yaml" \
      --trainer.max_epochs "$pretrain_epochs" "$@"
    pretrained="$RUNS/table11/$arch/$dataset/pretrain/best.ckpt"
    for layers in 1 2 3 4; do
      for method in vanilla r2 r4 r7; do
        "$PY" -m classification fit "${common[@]}" --config "$C/schedules/cifar_finetune.yaml" \
          --config "$C/methods/$method.yaml" --model.method.layers "$layers" \
          --model.init_from "$pretrained" "$@"
      done
    done
  done
done
"$PY" -m classification.report "$RUNS/table11"
