"""PyTorch EdgeSAM: model definition, checkpoint loading, predictor and ONNX export (``[torch]`` extra)."""
