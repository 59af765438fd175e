# Calibration: only the classifiers and the BatchNorm statistics move (paper: 1000 steps before
# fine-tuning). Start from a trained model with --cfg-options load_from=<checkpoint>.
_base_ = ['./deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64.py', '../_base_/methods/calibration.py']
