# Calibration: only the classifiers and the BatchNorm statistics move (paper: 1000 steps before
# fine-tuning). Start from a trained model with --cfg-options load_from=<checkpoint>.
_base_ = ['./upernet_r18_1xb8-300_fmnistseg-64x64.py', '../_base_/methods/calibration.py']
