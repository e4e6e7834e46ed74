"""ONNX export (checked, with metadata) and inference sessions (onnxruntime on CPU or CUDA)."""
