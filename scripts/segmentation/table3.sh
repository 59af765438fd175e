#!/usr/bin/env bash
# Table 3 of the paper: augmented Pascal VOC12, models trained on Cityscapes by MMSegmentation.
# Per model: calibration (classifiers + BN statistics; 1000 iterations, 5000 for MobileNetV2),
# then from the calibrated checkpoint, for seeds 233/234/235: vanilla BP on all / 5 / 10 layers
# and gradient filters on 5 / 10 layers (20,000 iterations, SGD 0.01 cosine, batch 8).
#
# Usage: bash scripts/segmentation/table3.sh [MODELS] [-- extra --cfg-options k=v ...]
#   e.g. bash scripts/segmentation/table3.sh "deeplabv3_r18-d8" -- default_hooks.checkpoint.interval=1000
# VOC must be where mmseg's pascal_voc12_aug.py expects it (data/VOCdevkit/VOC2012 + VOCaug);
# the Cityscapes checkpoints are downloaded by mmengine on first use (network needed once).
# Multi-GPU: PY="torchrun --nproc_per_node 4" and add --launcher pytorch (edit the calls below).
#
# The paper's mIoU % (calibration | vanilla all, 5L, 10L | filter 5L, 10L):
#   PSPNet-R18         12.86 | 55.01 39.54 53.15 | 39.34 50.88
#   PSPNet-MBV2        14.20 | 48.48 36.35 46.01 | 36.14 44.90
#   FCN-R18            10.95 | 45.22 27.41 43.87 | 27.42 36.30
#   DeepLabV3-R18      13.95 | 58.32 40.85 54.65 | 33.09 47.11
#   DeepLabV3-MBV2     21.96 | 55.66 38.21 47.95 | 35.47 45.53
#   UPerNet-R18        14.71 | 64.88 47.93 48.83 | 47.04 48.00
set -euo pipefail
PY=${PY:-python}
DATASET=${DATASET:-voc12aug}  # or cityscapes (the same methods on mmseg's Cityscapes config)
WORK=${WORK:-work_dirs/table3/$DATASET}
C=configs/segmentation/$DATASET
case $DATASET in voc12aug) TAG=voc12aug-512x512 ;; cityscapes) TAG=cityscapes-512x1024 ;;
  *) echo "DATASET must be voc12aug or cityscapes, got $DATASET" >&2; exit 2 ;; esac
MODELS=${1:-"pspnet_r18-d8 pspnet_m-v2-d8 fcn_r18-d8 deeplabv3_r18-d8 deeplabv3_m-v2-d8 upernet_r18"}
shift $(( $# < 1 ? $# : 1 ))
[[ "${1:-}" == "--" ]] && shift
dirs=()
for model in $MODELS; do
  base="${model}_1xb8-20k_$TAG"
  "$PY" -m segmentation.train "$C/${base}_calibration.py" --work-dir "$WORK/${base}_calibration" ${1:+--cfg-options "$@"}
  dirs+=("$WORK/${base}_calibration")
  calibrated=$(cat "$WORK/${base}_calibration/last_checkpoint")
  for method in "" _vanilla5l _vanilla10l _filter5l _filter10l; do
    for seed in 233 234 235; do
      "$PY" -m segmentation.train "$C/${base}${method}.py" --work-dir "$WORK/${base}${method}_seed$seed" \
        --cfg-options load_from="$calibrated" randomness.seed=$seed "$@"
      dirs+=("$WORK/${base}${method}_seed$seed")
    done
  done
done
"$PY" -m segmentation.report "${dirs[@]}" --csv "$WORK/report.csv"
