#!/usr/bin/env bash
# The paper's classification protocol on Fashion-MNIST, sized for a 2-core CPU (`make demo`):
# FedAvg label-shard split into 2 partitions, pretrain ResNet-18 (96x96 input) on partition 0,
# validate it on partition 1 as it is (no fine-tuning), fine-tune the last 2 conv layers + classifier on partition 1 with vanilla BP and with
# gradient filters R2 and R4 (same seed, same data), then print the report table.
# Usage: bash scripts/classification/fmnist_demo.sh [extra LightningCLI args for every stage]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
C=configs/classification
common=(--config "$C/base.yaml" --config "$C/models/resnet18.yaml" --config "$C/datasets/fmnist.yaml"
        --runs_dir "$RUNS" --table demo)

"$PY" -m classification fit "${common[@]}" --config "$C/schedules/fmnist_pretrain.yaml" "$@"
pretrained="$RUNS/demo/resnet18/fmnist/pretrain/best.ckpt"
"$PY" -m classification validate "${common[@]}" --config "$C/schedules/fmnist_finetune.yaml" \
  --run_name no-finetune --model.init_from "$pretrained" "$@"
for method in vanilla r2 r4; do
  "$PY" -m classification fit "${common[@]}" --config "$C/schedules/fmnist_finetune.yaml" \
    --config "$C/methods/$method.yaml" --model.method.layers 2 --model.init_from "$pretrained" "$@"
done
"$PY" -m classification.report "$RUNS/demo"
echo "TensorBoard: tensorboard --logdir $RUNS/demo"
