"""The ``fast`` plugin: TransformerNet trained here, exported to ONNX, run by onnxruntime."""

from stylebox.plugins.faststyle.plugin import FastParams, FastPlugin

__all__ = ["FastParams", "FastPlugin"]
