#!/usr/bin/env bash
# Table 2 of the paper: ImageNet (224x224, 1000 classes), MobileNetV2, ResNet-18, ResNet-34, MCUNet.
# Pretrain on partition 0, then on partition 1: no fine-tuning (validate only), vanilla BP on all /
# the last 2 / the last 4 conv layers, gradient filter R2 on the last 2 / 4. Runs land in
# runs/table2/<arch>/imagenet/<method>.
#
# Usage: bash scripts/classification/table2.sh [ARCHS] [-- extra LightningCLI args]
#   e.g. bash scripts/classification/table2.sh "resnet18" -- --trainer.devices 8 --trainer.strategy ddp
# ImageNet must be ImageFolders data/imagenet/{train,val} (or pass --data.data_dir).
#
# The paper's top-1 (%) and memory, #Layers = All / 2 / 4 (vanilla) and 2 / 4 (R2):
#   MobileNetV2: none 4.2 | vanilla 75.1 / 63.1 / 62.2 (24.33MB / 245.00KB / 459.38KB) | R2 63.1 / 63.4 (80.00KB / 150.00KB)
#   ResNet-18:   none 4.7 | vanilla 73.1 / 70.4 / 72.3 (8.33MB / 196.00KB / 490.00KB)  | R2 68.6 / 68.5 (64.00KB / 112.00KB)
#                FLOPs vanilla 2 / 4: 489.20M / 1.14G, R2 2 / 4: 28.32M / 61.53M
#   MCUNet:      none 4.1 | vanilla 68.5 / 62.1 / 64.9 (9.17MB / 220.50KB / 312.38KB)  | R2 61.8 / 64.4 (72.00KB / 102.00KB)
#   ResNet-34:   vanilla 70.8 / 69.6 / 72.3 (13.11MB / 196.00KB / 392.00KB)             | R2 68.6 / 70.6 (64.00KB / 128.00KB)
#                FLOPs vanilla 2 / 4: 489.20M / 1.21G, R2 2 / 4: 28.32M / 64.07M (65.61M with 1000 classes, see docs/cost_model.md)
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
C=configs/classification
ARCHS=${1:-"mobilenet_v2 resnet18 resnet34 mcunet"}
shift $(( $# < 1 ? $# : 1 ))
[[ "${1:-}" == "--" ]] && shift

for arch in $ARCHS; do
  common=(--config "$C/base.yaml" --config "$C/models/$arch.yaml" --config "$C/datasets/imagenet.yaml"
          --runs_dir "$RUNS" --table table2)
  "$PY" -m classification fit "${common[@]}" --config "$C/schedules/imagenet_pretrain.yaml" "$@"
  pretrained="$RUNS/table2/$arch/imagenet/pretrain/best.ckpt"
  "$PY" -m classification validate "${common[@]}" --config "$C/schedules/imagenet_finetune.yaml" \
    --run_name no-finetune --model.init_from "$pretrained" "$@"
  finetune=("${common[@]}" --config "$C/schedules/imagenet_finetune.yaml" --model.init_from "$pretrained")
  "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/vanilla.yaml" --model.method.layers all "$@"
  for layers in 2 4; do
    for method in vanilla r2; do
      "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/$method.yaml" \
        --model.method.layers "$layers" "$@"
    done
  done
done
"$PY" -m classification.report "$RUNS/table2"
