"""What training and evaluation share: the data-parallel runner, paths, atomic writes, the multi-host start.

Nothing here imports ``training`` or ``evaluation``; both import from here. The submodules are imported
by name (``runtime.parallel`` imports jax, ``runtime.atomic`` and ``runtime.paths`` only etils).
"""
