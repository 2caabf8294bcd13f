"""Test and benchmark support, outside the installed package.

* :mod:`experiments.support.torch_models`: PyTorch reimplementations of the official CIFAR
  models (the torch side of the parity tests and of ``experiments/benchmarks/train_step.py``);
* :mod:`experiments.support.synthetic_images`: generated stand-ins for the official datasets
  (the input-pipeline tests and ``experiments/benchmarks/input_pipeline.py``).
"""
