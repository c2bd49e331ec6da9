"""onnxruntime sessions: one per model, device and form (as exported, or wrapped to take
uint8 pixels: :mod:`.iograph`), created once and shared.

Providers follow the device setting. CUDA uses cuDNN's heuristic algorithm search: the
default exhaustive search re-benchmarks every convolution for every new photo size.
onnxruntime silently falls back to CPU when CUDA cannot load; here, for a GPU device
named, that is an error that says so, never a silent slowdown, and ``auto`` runs on the CPU
with a warning that says why.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stylebox.errors import ConfigError
from stylebox.plugins.faststyle.manifest import BadModel, ModelManifest

if TYPE_CHECKING:  # they import onnx (a second or more): loaded when a graph is made
    from stylebox.plugins.faststyle.thumbnorm import ThumbNorm

Device = Literal["auto", "cpu", "cuda", "tensorrt"]

log = logging.getLogger("stylebox.fast")

_lock = threading.Lock()
_sessions: dict[tuple[str, str], Any] = {}
_wrapped: dict[tuple[str, str], tuple[Any, str, str]] = {}
_thumbnorm: dict[tuple[str, str], tuple[ThumbNorm, Any, Any] | None] = {}


def _gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


#: The CUDA probe's last answer, and when it was asked (monotonic).
_cuda_answer: tuple[bool, float] | None = None
#: How long a "no" holds: a GPU whose memory was full at one reload may load later.
CUDA_RETRY_SECONDS = 60.0


def cuda_loads() -> bool:
    """Whether onnxruntime's CUDA provider loads on this machine, asked of a one-node graph
    (once it has, for good; once it has not, again after a minute): onnxruntime-gpu lists
    the provider wherever it is installed, and only a session finds that its CUDA or cuDNN
    libraries are missing (it then runs on the CPU)."""
    global _cuda_answer
    answer = _cuda_answer
    if answer is not None and (answer[0] or time.monotonic() - answer[1] < CUDA_RETRY_SECONDS):
        return answer[0]
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    try:
        session = ort.InferenceSession(
            model.SerializeToString(),
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
        loads = "CUDAExecutionProvider" in session.get_providers()
    except Exception:  # as any failure to load it
        loads = False
    _cuda_answer = (loads, time.monotonic())
    return loads


def resolve(device: str) -> Literal["cpu", "cuda", "tensorrt"]:
    if device == "auto":
        if not _gpu_available():
            return "cpu"
        if cuda_loads():
            return "cuda"
        # A GPU that onnxruntime cannot use: "auto" runs, on the CPU, and says so once.
        _say_once(
            'device "auto": PyTorch sees a GPU but onnxruntime\'s CUDA provider does not '
            f"load ({_why_no_cuda()}); the fast plugin runs on the CPU"
        )
        return "cpu"
    if device.startswith("cuda"):
        return "cuda"
    if device in ("cpu", "tensorrt"):
        return device  # type: ignore[return-value]
    raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or tensorrt")


@functools.cache
def _say_once(message: str) -> None:
    log.warning(message)


def device_index(device: str) -> int:
    """The GPU a device setting names: N of ``cuda:N``, else the first (0)."""
    _, _, index = device.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or tensorrt")
    return int(index)


def providers(device: str, engine_cache: Path) -> list[Any]:
    kind = resolve(device)
    index = device_index(device)
    cpu = "CPUExecutionProvider"
    cuda = (
        "CUDAExecutionProvider",
        {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"},
    )
    if kind == "cpu":
        return [cpu]
    if kind == "cuda":
        return [cuda, cpu]
    engine_cache.mkdir(parents=True, exist_ok=True)
    tensorrt = (
        "TensorrtExecutionProvider",
        {
            "device_id": index,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engine_cache),
        },
    )
    return [tensorrt, cuda, cpu]


#: The device each execution provider computes on (TensorRT runs on the CUDA device).
_PROVIDER_DEVICES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
}


def used_by(session: Any) -> tuple[str, str]:
    """The device and the execution provider a session actually runs on (its first
    provider, which takes every node it can): what was resolved, not what was asked for."""
    provider = str(session.get_providers()[0])
    return _PROVIDER_DEVICES.get(provider, provider), provider


def session_for(model: Path, device: str, engine_cache: Path) -> Any:
    """The shared session for ``model`` on ``device``."""
    kind = f"{resolve(device)}:{device_index(device)}"
    with _lock:
        key = (str(model.resolve()), kind)
        if key not in _sessions:
            _sessions[key] = _create(str(model), model, device, engine_cache)
        return _sessions[key]


def uint8_session_for(
    model: Path, manifest: ModelManifest, device: str, engine_cache: Path
) -> tuple[Any, str, str]:
    """The shared session for ``model`` wrapped by :func:`.iograph.uint8_io` on ``device``,
    with the names of its uint8 image input and output. :class:`.iograph.NotWrappable`
    when the graph cannot take the conversions."""
    import onnx

    from stylebox.plugins.faststyle.iograph import NotWrappable, uint8_io

    kind = f"{resolve(device)}:{device_index(device)}"
    with _lock:
        # The wrapping follows the manifest: two links to one file may have two manifests.
        key = (str(model.resolve()), f"{kind}/uint8/{manifest.model_dump_json()}")
        if key not in _wrapped:
            try:
                proto = onnx.load(str(model))
            except Exception as exc:  # the plain path says what is wrong with it
                raise NotWrappable(f"onnx cannot load it: {exc}") from exc
            wrapped = uint8_io(proto, manifest)
            session = _create(wrapped.model.SerializeToString(), model, device, engine_cache)
            _wrapped[key] = (session, wrapped.input, wrapped.output)
        return _wrapped[key]


def thumbnorm_sessions_for(
    model: Path, device: str, engine_cache: Path
) -> tuple[ThumbNorm, Any, Any] | None:
    """The shared sessions of ``model``'s thumbnail-normalisation graphs on ``device`` (see
    :mod:`.thumbnorm`): the graphs, the measuring session and the applying one; ``None``
    for a model they cannot be made for."""
    import onnx

    from stylebox.plugins.faststyle.thumbnorm import thumbnail_norm

    kind = f"{resolve(device)}:{device_index(device)}"
    with _lock:
        key = (str(model.resolve()), f"{kind}/thumbnorm")
        if key not in _thumbnorm:
            made: tuple[ThumbNorm, Any, Any] | None = None
            try:
                graphs = thumbnail_norm(onnx.load(str(model)))
                if graphs is not None:
                    made = (
                        graphs,
                        _create(graphs.measure.SerializeToString(), model, device, engine_cache),
                        _create(graphs.apply.SerializeToString(), model, device, engine_cache),
                    )
            except Exception as exc:  # tiles keep their own statistics: worse, not failed
                log.warning(
                    "%s: tiles normalised each on its own (the shared-statistics graphs "
                    "could not be made: %s)",
                    model,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
            _thumbnorm[key] = made
        return _thumbnorm[key]


def _create(source: str | bytes, model: Path, device: str, engine_cache: Path) -> Any:
    import onnxruntime as ort

    kind = resolve(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads would otherwise busy-wait after every run, taking the CPU
    # from decoding, encoding and other plugins; no slower per image (measured).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            source, sess_options=options, providers=providers(device, engine_cache)
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModel(f"{model}: onnxruntime cannot load it: {first}") from None
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    if kind in wanted and wanted[kind] not in session.get_providers():
        raise fell_back(str(model), device, session.get_providers())
    return session


def run_options(session: Any, give_back: bool) -> Any:
    """The options for a run of ``session``; with ``give_back``, on the CPU, its memory
    arena hands back what it grew by once the run ends. onnxruntime keeps it for the next
    runs otherwise: a photo's 768 px tiles grew it by about 1.7 GB, which a daemon then
    held for good. A run that gives back makes the next one dearer, which grows it again
    (every run so: 1.1x the time of a tiled photo, 1.45x a 768x512 one): a tiled photo's
    thumbnail pass and last tile ask it, no other run (no slower: bench/fast_memory.py).
    ``None``, the defaults, for a session on a GPU."""
    if not give_back or session.get_providers() != ["CPUExecutionProvider"]:
        return None
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def fell_back(what: str, device: str, providers: list[str]) -> ConfigError:
    """The error for a GPU ``device`` named that onnxruntime could not use."""
    return ConfigError(
        f"{what}: device {device!r} was asked for but onnxruntime fell back to "
        f'{providers}; {_why_no_cuda()}, or use device = "cpu"'
    )


def _why_no_cuda() -> str:
    """Why onnxruntime runs nothing on the GPU here, as far as it can be told."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider: install onnxruntime-gpu in its place"
    return "the CUDA/cuDNN (or TensorRT) libraries did not load: see onnxruntime's log above"
