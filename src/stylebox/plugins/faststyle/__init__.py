"""The feed-forward fast-style engine: TransformerNet, its training and (to come) its
ONNX export and onnxruntime plugin."""
