#!/usr/bin/env bash
# Dynamic sparse update (our reading of Li & Chang, ISCAS 2024) on the demo's protocol with
# MobileNetV2 (Fashion-MNIST at 96x96, pretrain on partition 0, fine-tune on partition 1 with
# configs/classification/schedules/fmnist_finetune.yaml): 2 % of the conv weights per step within
# 256 KB, channels rotating or importance-sampled, next to static sparse update training the same
# number of weights (34 of the last conv's 320 input channels, chosen once), gradient filters and
# vanilla BP on the last 2 and 4 layers. The paper: 85.77 % on CIFAR-10 with 2 % of the weights,
# 98 % less feature memory than dense training, within 256 KB.
# Shares its run folders with compare.sh: a stage whose best.ckpt exists is not run again (FORCE=1
# re-runs everything). Usage: bash scripts/classification/dynamic.sh [extra LightningCLI args]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
C=configs/classification
arch=mobilenet_v2

done_already() { [[ -z "${FORCE:-}" && -f "$RUNS/compare/$arch/fmnist/$1/best.ckpt" ]]; }

common=(--config "$C/base.yaml" --config "$C/models/$arch.yaml" --config "$C/datasets/fmnist.yaml"
        --runs_dir "$RUNS" --table compare)
done_already pretrain || "$PY" -m classification fit "${common[@]}" --config "$C/schedules/fmnist_pretrain.yaml" "$@"
finetune=("${common[@]}" --config "$C/schedules/fmnist_finetune.yaml"
          --model.init_from "$RUNS/compare/$arch/fmnist/pretrain/best.ckpt")
for layers in 2 4; do
  for method in vanilla r2 r4; do
    tag=$([[ $method == vanilla ]] && echo "vanilla-${layers}L" || echo "R${method#r}-${layers}L")
    done_already "$tag" || "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/$method.yaml" \
      --model.method.layers "$layers" "$@"
  done
done
done_already sparse-static-2pct || "$PY" -m classification fit "${finetune[@]}" --config "$C/methods/sparse_update.yaml" \
  --model.method.n_bias_update 1 --model.method.n_weight_update 1 --model.method.weight_update_ratio 34 \
  --run_name sparse-static-2pct "$@"
for policy in rotation importance; do
  done_already "dyn-$policy-u0.02-256KB" || "$PY" -m classification fit "${finetune[@]}" \
    --config "$C/methods/dynamic_sparse.yaml" --model.method.policy "$policy" "$@"
done
"$PY" -m classification.report "$RUNS/compare/$arch" --csv "$RUNS/compare/dynamic.csv" --png "$RUNS/compare/dynamic.png"
echo "TensorBoard: tensorboard --logdir $RUNS/compare/$arch"
