# mmseg's default runtime plus gradfilt's modules and TensorBoard next to the text log.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['segmentation.hooks', 'segmentation.datasets'], allow_failed_imports=False)
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
