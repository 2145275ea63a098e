"""Torch-free serving runtime: onnxruntime sessions with numpy pre/post-processing.

Import submodules directly (``edgesam_backend.runtime.predictor``, ``.transforms``, ...); this package
``__init__`` stays import-light so the coordinate transforms can be shared with the torch code.
"""
