# mmseg's default runtime plus gradfilt's modules: the runner that applies the config's `method`
# (segmentation.runner.MethodRunner) and TensorBoard next to the text log.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['segmentation.runner', 'segmentation.datasets'], allow_failed_imports=False)
runner_type = 'MethodRunner'
randomness = dict(seed=0)  # runs repeat; another seed: --cfg-options randomness.seed=N
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
