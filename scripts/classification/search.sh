#!/usr/bin/env bash
# Budgeted configuration search on the demo's protocol (Fashion-MNIST at 96x96, pretrain on partition 0,
# fine-tune on partition 1): which of the last 8 convs train, vanilla or filtered with r in {2, 4, 7}, and
# error-map pruning's kept share alpha (EMP_ALPHAS) on them or none.
#  1. latency: the network's conv geometries timed at the fine-tuning batch (python -m latency), for the
#     search's per-layer latency model;
#  2. the few-sample predictor: SAMPLES sampled configurations (and a third as many again trained with EMP),
#     each fine-tuned briefly (schedules/fmnist_search_sample.yaml: one epoch on 5,000 images), runs named by
#     their labels;
#  3. for each budget of BUDGETS (default: the activation memory of R2-2L, then of R4-4L, then the backward
#     FLOPs of R2-4L) the search, the
#     searched configuration fine-tuned with the full recipe (schedules/fmnist_finetune.yaml, into
#     runs/compare like the fixed configurations), and the search's table again with its measured accuracy.
# Reuses the pretraining and the fixed configurations' runs of scripts/classification/compare.sh (runs them if
# missing). A stage whose best.ckpt (or conv.csv) exists is not run again (FORCE=1 re-runs everything).
# Usage: bash scripts/classification/search.sh [extra LightningCLI args for every stage]
set -euo pipefail
PY=${PY:-python}
RUNS=${RUNS:-runs}
ARCH=${ARCH:-resnet18}
SAMPLES=${SAMPLES:-25}
BUDGETS=${BUDGETS-"memory=R2-2L memory=R4-4L flops=R2-4L"}
EMP_ALPHAS=${EMP_ALPHAS-0.5}  # error-map pruning's kept share, searched beside no pruning ("" to leave EMP out)
C=configs/classification
OUT="$RUNS/search/$ARCH"

done_already() { [[ -z "${FORCE:-}" && -f "$1" ]]; }

common=(--config "$C/base.yaml" --config "$C/models/$ARCH.yaml" --config "$C/datasets/fmnist.yaml" --runs_dir "$RUNS")
pretrained="$RUNS/compare/$ARCH/fmnist/pretrain/best.ckpt"
done_already "$pretrained" || "$PY" -m classification fit "${common[@]}" --table compare \
  --config "$C/schedules/fmnist_pretrain.yaml" "$@"
finetune=("${common[@]}" --table compare --config "$C/schedules/fmnist_finetune.yaml" --model.init_from "$pretrained")
for layers in 2 4; do
  for method in vanilla r2 r4; do
    tag=$([[ $method == vanilla ]] && echo "vanilla-${layers}L" || echo "R${method#r}-${layers}L")
    done_already "$RUNS/compare/$ARCH/fmnist/$tag/best.ckpt" || "$PY" -m classification fit "${finetune[@]}" \
      --config "$C/methods/$method.yaml" --model.method.layers "$layers" "$@"
  done
done

done_already "$OUT/latency/conv.csv" || "$PY" -m latency --cases "$ARCH" --image-size 96 --batch 64 \
  --patch-sizes 2 4 7 --out "$OUT/latency"

knob=(); [[ -n "$EMP_ALPHAS" ]] && knob=(--emp-alphas $EMP_ALPHAS)
"$PY" -m classification search "${finetune[@]}" --sample "$SAMPLES" "${knob[@]}" --out "$OUT" "$@"
for yaml in "$OUT"/samples/*.yaml; do
  label=$(basename "$yaml" .yaml)
  done_already "$RUNS/search_samples/$ARCH/fmnist/$label/best.ckpt" || "$PY" -m classification fit "${common[@]}" \
    --table search_samples --config "$C/schedules/fmnist_search_sample.yaml" --model.init_from "$pretrained" \
    --config "$yaml" --run_name "$label" "$@"
done

search=("${knob[@]}" --latency-csv "$OUT/latency/conv.csv" --measured "$RUNS/search_samples/$ARCH/fmnist"
        --compare "$RUNS/compare/$ARCH/fmnist")
for budget in $BUDGETS; do
  dir="$OUT/${budget//=/-}"
  "$PY" -m classification search "${finetune[@]}" --budget "$budget" "${search[@]}" --out "$dir" "$@"
  label=$(sed -n 's/.*: \([_V0-9a.-]*\) over .*/\1/p' "$dir/method.yaml")
  done_already "$RUNS/compare/$ARCH/fmnist/$label/best.ckpt" || "$PY" -m classification fit "${finetune[@]}" \
    --config "$dir/method.yaml" --run_name "$label" "$@"
  "$PY" -m classification search "${finetune[@]}" --budget "$budget" "${search[@]}" --out "$dir" "$@" \
    | tee "$dir/table.md"
done
