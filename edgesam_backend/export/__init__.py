"""Build-time model tools (not needed to serve): ONNX export from PyTorch (:mod:`.onnx`, needs torch),
``edgesam.*`` metadata (:mod:`.metadata`), and the int8 encoder: graph rewrites (:mod:`.rewrites`),
calibration (:mod:`.calibration`), quantization (:mod:`.int8`) and agreement with fp32 (:mod:`.agreement`)."""
