#!/usr/bin/env bash
# The segmentation protocol in miniature on the Fashion-MNIST segmentation set (64x64, CPU):
# for DeepLabV3-R18 and UPerNet-R18, train all layers from random weights (the stand-in for
# the paper's Cityscapes-pretrained models), then from that checkpoint: calibration
# (classifiers + BN statistics), vanilla BP on the paper's 5 layers, gradient filters on them.
# Usage: bash scripts/segmentation/fmnist_seg.sh [extra --cfg-options k=v ...]
set -euo pipefail
PY=${PY:-python}
WORK=${WORK:-work_dirs/fmnist_seg}
C=configs/segmentation/fmnist_seg
dirs=()
for model in deeplabv3_r18-d8 upernet_r18; do
  base="${model}_1xb8-300_fmnistseg-64x64"
  "$PY" -m segmentation.train "$C/$base.py" --work-dir "$WORK/$base" "$@"
  dirs+=("$WORK/$base")
  start=$(cat "$WORK/$base/last_checkpoint")  # mmengine's pointer to the run's last checkpoint, whatever max_iters
  for method in calibration vanilla5l filter5l; do
    "$PY" -m segmentation.train "$C/${base}_$method.py" --work-dir "$WORK/${base}_$method" \
      --cfg-options load_from="$start" "$@"
    dirs+=("$WORK/${base}_$method")
  done
done
"$PY" -m segmentation.report "${dirs[@]}" --csv "$WORK/report.csv"
