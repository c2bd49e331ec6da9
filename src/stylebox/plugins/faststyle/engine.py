"""How a batch of pixels goes through onnxruntime: two engines with one interface.

Both take a uint8 NHWC batch (``N, H, W, 3``) already padded or resized to what the model
accepts, and give the stylised batch back in NHWC on the 0..255 scale.

* :class:`GraphEngine` runs the model wrapped by :func:`.iograph.uint8_io`: pixels go in
  and out as uint8 and every conversion happens inside the graph. On a GPU it binds the
  input and output on the device (onnxruntime I/O binding), so what crosses the bus is the
  uint8 image each way and the host does no per-pixel work. Its result is uint8.
* :class:`PlainEngine` converts in numpy as the manifest says and feeds the model as it
  was exported: the fallback for graphs that cannot be wrapped. Its result is float,
  unrounded.

On the same model the two give the same pixels: the graph does the numpy path's
arithmetic in the same order (``tests/test_fast_io.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from stylebox.errors import ConfigError
from stylebox.plugins.faststyle.checks import check_model
from stylebox.plugins.faststyle.manifest import ModelManifest
from stylebox.plugins.faststyle.session import (
    run_options,
    session_for,
    uint8_session_for,
    used_by,
)

log = logging.getLogger("stylebox.fast")


class Engine(Protocol):
    #: The session this engine runs (through I/O binding or not), and its image input.
    session: Any
    input: str

    def run(
        self,
        batch: np.ndarray,
        feeds: dict[str, np.ndarray] | None = None,
        *,
        give_back: bool = False,
    ) -> np.ndarray:
        """uint8 ``(N, H, W, 3)`` in, ``(N, H', W', 3)`` on 0..255 out; ``feeds``: inputs
        that change per call (an arbitrary-style model's style vector); ``give_back``: the
        memory the run took is handed back as it ends (see :func:`.session.run_options`)."""
        ...


class PlainEngine:
    """The model as exported, its image converted in numpy (float32 round trip)."""

    def __init__(self, session: Any, manifest: ModelManifest, feeds: dict[str, np.ndarray]) -> None:
        self.session, self.manifest, self.feeds = session, manifest, feeds
        self.input = manifest.input

    def feed(self, batch: np.ndarray, feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The session's inputs for ``batch``: its pixels as the model takes them, and the
        other inputs."""
        m = self.manifest
        array = batch.astype(np.float32)
        if m.value_range == "0-1":
            array /= 255.0
        if m.layout == "NCHW":
            array = array.transpose(0, 3, 1, 2)
        return {m.input: np.ascontiguousarray(array), **self.feeds, **(feeds or {})}

    def run(
        self,
        batch: np.ndarray,
        feeds: dict[str, np.ndarray] | None = None,
        *,
        give_back: bool = False,
    ) -> np.ndarray:
        m = self.manifest
        options = run_options(self.session, give_back)
        output = self.session.run([m.output], self.feed(batch, feeds), options)[0]
        if m.layout == "NCHW":
            output = output.transpose(0, 2, 3, 1)
        if m.value_range == "0-1":
            output = output * 255.0
        return output


class GraphEngine:
    """The model wrapped to take and give uint8 NHWC; on ``device`` "cuda" its input and
    output are bound on the GPU the session runs on."""

    def __init__(
        self,
        session: Any,
        input: str,
        output: str,
        feeds: dict[str, np.ndarray],
        binding: bool,
    ) -> None:
        self.session, self.input, self.output, self.feeds = session, input, output, feeds
        #: Where the bound input and output live: the session's GPU, else the host (I/O
        #: binding works there too, and the tests run it on the CPU).
        self.device, self.device_id = "cpu", 0
        providers = session.get_providers()
        for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
            if provider in providers:
                options = session.get_provider_options().get(provider, {})
                self.device, self.device_id = "cuda", int(options.get("device_id", 0))
                break
        self.binding = binding

    def run(
        self,
        batch: np.ndarray,
        feeds: dict[str, np.ndarray] | None = None,
        *,
        give_back: bool = False,
    ) -> np.ndarray:
        extra = {**self.feeds, **(feeds or {})}
        options = run_options(self.session, give_back)
        if not self.binding:
            return self.session.run([self.output], {self.input: batch, **extra}, options)[0]
        import onnxruntime as ort

        # A fresh binding per call: one session serves every inbox and thread using it.
        binding = self.session.io_binding()
        pixels = ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(batch), self.device, self.device_id
        )
        binding.bind_ortvalue_input(self.input, pixels)
        for name, value in extra.items():
            binding.bind_cpu_input(name, value)
        # The output's shape is the graph's to say; onnxruntime allocates it on the device.
        binding.bind_output(self.output, self.device, self.device_id)
        self.session.run_with_iobinding(binding, options)
        return binding.copy_outputs_to_cpu()[0]


IO = Literal["auto", "uint8", "plain"]


def engine_for(
    model: Path,
    manifest: ModelManifest,
    device: str,
    engine_cache: Path,
    io: IO = "auto",
    binding: bool | None = None,
    feeds: dict[str, np.ndarray] | None = None,
) -> Engine:
    """The engine for ``model`` on ``device``.

    ``io``: "uint8" the wrapped graph, "plain" the numpy conversions, "auto" the wrapped
    graph where the model takes it (the plain path otherwise). ``binding``: I/O binding,
    by default where the session runs on a GPU (on the CPU it gains nothing: the input
    already lives where the model reads it). ``feeds``: the other inputs' arrays, as
    :func:`.checks.check_model` gives them (default: checked from the manifest).
    """
    if feeds is None:
        feeds = check_model(model, manifest).feeds
    if io != "plain":
        from stylebox.plugins.faststyle.iograph import NotWrappable  # onnx, when needed

        try:
            session, pixels, styled = uint8_session_for(model, manifest, device, engine_cache)
        except NotWrappable as exc:
            if io == "uint8":
                raise ConfigError(f"{model}: cannot take uint8 pixels: {exc}") from exc
            log.info("%s: numpy conversions (%s)", model, exc)
        else:
            on_gpu = used_by(session)[0] == "cuda"
            return GraphEngine(
                session, pixels, styled, feeds, on_gpu if binding is None else binding
            )
    return PlainEngine(session_for(model, device, engine_cache), manifest, feeds)
