"""Classification experiments of the paper on PyTorch Lightning: ``python -m classification``.

Modules: ``data`` (datasets, FedAvg partitions, the data module), ``module`` (network +
method + optimizer), ``cli`` (LightningCLI entry point and run folders), ``report``
(paper-style tables and plots from the TensorBoard logs).
"""
