"""The inference engine: the fastest exact-enough way to run the patch network on this machine.

Machines differ (AVX-512 with BF16, AVX2 only, CUDA), and so does the fastest way to run a
ResNet50: bfloat16 arithmetic is ×3–6 on a CPU that has it and ×0.2 on one that emulates it.
So the engine is chosen by measuring, once per machine, never by guessing:

1. :func:`core.cpu.detect_cpu_features` reads what the CPU can do (AVX2, AVX-512, BF16/AMX,
   VNNI), less what ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` forbid (how an AVX2-only
   CPU is emulated on a bigger one); :data:`BACKENDS` says which backends can run on it.
2. :func:`measure_machine` times every one of them (in a child process, on an untrained
   ResNet50 of the model's input size: speed depends on the shape, not the weights) and
   writes the ranking to a small JSON file, ``$ICCA_ENGINE_CACHE`` or
   ``data/engine-choice.json``, under a key of the machine (CPU model, the features above,
   threads), the library versions and the network (architecture, classes, input size).
3. :func:`prepare_engine` walks the ranking fastest first and takes the first backend whose
   every ensemble member passes the check: max |Δp| ≤ :data:`MAX_ABS_PROB_DIFF` against fp32
   eager on a fixed case (:func:`verification_patches`). Exactness depends on the weights
   (an untrained ResNet50 is exact in any precision; the trained demo model moves by up to 0.034
   in all-bf16), so each model is checked, once per machine and backend; the result is kept in
   the same file under the checkpoint's sha256. A backend whose runtimes would hold more
   than ``$ICCA_ENGINE_MEMORY_MB`` (900 MiB) for all members is passed over: the ranking
   records what one member's runtime holds (OpenVINO fp32 keeps its weights twice, about
   200 MiB per 224-px member against about 120 for ONNX Runtime fp32, at much the same speed).

Where the choice is made: ``make demo-model`` and ``python -m core.engine`` rank the backends
(a minute, once per machine); the dashboard calls :func:`prepare_engine_in_background` at
model load (with ``measure=False``): it answers at once with the default engine (torch fp32
channels-last: exact, nothing to check) and swaps in the ranked choice when it is built and
checked. On a machine never ranked it stays on the default; it never spends a minute of both
cores measuring while a surgeon waits. An analysis keeps the engine it started with, unless
that engine fails on a request: then the model falls back to the default for good
(:func:`fall_back_to_default`).

Backends (each a real library, nothing hand-written): torch eager channels-last fp32 and
bf16 autocast, ``torch.compile`` (inductor with frozen weights; compiled once per process
per network, at model load, on a fixed batch shape so a ragged last batch never recompiles),
ONNX Runtime fp32 and static int8 (VNNI CPUs without bf16), OpenVINO fp32, bf16 and bf16 with
an fp32 stem (native BF16 only). On CUDA: torch fp32 and bf16/fp16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.cpu import CpuFeatures, detect_cpu_features, process_status_mib
from core.errors import CheckpointError, SettingError, UserFacingError, out_of_memory
from core.inference import INFERENCE_BATCH, predict_patches
from core.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) float32 → (B, C) logits
MAX_ABS_PROB_DIFF = 0.02  # a backend whose probabilities move more than this from fp32 is never used
ENGINE_CACHE_ENV = "ICCA_ENGINE_CACHE"
DEFAULT_ENGINE_CACHE = Path(__file__).resolve().parents[1] / "data" / "engine-choice.json"
CACHE_FORMAT = 1
# a model's checks are remembered under this revision of the conversions: raised when a conversion
# changes (2: OpenVINO bf16 keeps fp16 weights, the ONNX export leaves BatchNorm unfolded), so that
# members are checked again; the rankings, which time untrained networks, are kept
CHECK_REVISION = 2
VERIFY_PATCHES = 32  # patches of the fixed case each backend and each model is checked on
DEFAULT_BACKEND = "torch-cl-fp32"
REFERENCE_BACKEND = "torch-eager-fp32"
DEFAULT_BACKENDS = (DEFAULT_BACKEND, "torch-cuda-fp32")  # what default_engine runs on the CPU / a GPU
# backends that run the model's torch networks themselves, no copy: they hold no more than the default engine
OWN_NETWORK_BACKENDS = (DEFAULT_BACKEND, "torch-cl-bf16", "torch-cuda-fp32", "torch-cuda-autocast")
# and with the eager reference (an NCHW copy of each), the ones after which the torch weights stay with the model
TORCH_BACKENDS = (REFERENCE_BACKEND, *OWN_NETWORK_BACKENDS)
TMPFS_MAGIC, RAMFS_MAGIC = 0x01021994, 0x858458F6  # statfs f_type of file systems held in memory (linux/magic.h)
ENGINE_MEMORY_ENV = "ICCA_ENGINE_MEMORY_MB"
# What every member's runtime together may hold: the 2 GiB a server gets, less what the rest of it
# measured on a Xeon (2026-12-07): about 850 MiB for Python, CUDA-build torch and the app's imports,
# 160 for the runtimes' libraries, 100 for analysing a 1,586-patch case
DEFAULT_ENGINE_MEMORY_MB = 900.0


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------- backends


@dataclass(frozen=True)
class Backend:
    """One way to run a network.

    Attributes:
        key: stable identifier stored in the choice file.
        name: what the sidebar shows, e.g. "OpenVINO bf16".
        unusable: the reason this backend cannot run on a device / CPU, or ``None`` when it can.
        build: (network in eval mode, preprocessing, device) → predictor; may take seconds
            (export, compilation), never per request.
        from_onnx: for a runtime that reads the network's ONNX export: (path of that file,
            preprocessing, device) → predictor. :func:`build_engine` then exports every member
            before it builds any runtime (:func:`onnx_files`).
    """

    key: str
    name: str
    unusable: Callable[[torch.device, CpuFeatures], str | None]
    build: Callable[[torch.nn.Module, PreprocessConfig, torch.device], Predictor]
    from_onnx: Callable[[Path, PreprocessConfig, torch.device], Predictor] | None = None


def _cpu_only(device: torch.device, _: CpuFeatures) -> str | None:
    return None if device.type == "cpu" else "runs on the CPU only"


def _cpp_compiler(device: torch.device, _: CpuFeatures) -> str | None:
    """torch.compile builds C++ for the CPU at load: without a compiler (a slim container image) it cannot.

    Looked up on the PATH as inductor looks ($CXX, else g++ / c++ / clang++), not by importing
    inductor: that import alone (dynamo, Triton) adds about 150 MiB to a process that may never
    compile anything.
    """
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if any(shutil.which(name) for name in names):
        return None
    return "torch.compile needs a C++ compiler, and none was found"


def _needs_module(name: str) -> Callable[[torch.device, CpuFeatures], str | None]:
    """A runtime from PyPI: installed, on the CPU, and not under an ISA cap it would ignore.

    ONNX Runtime and OpenVINO pick their kernels from CPUID and ignore ``ONEDNN_MAX_CPU_ISA``
    (OpenVINO half-honours it and then fails); on a capped (emulated) CPU their speed would
    be the real CPU's, not the emulated one's, so they are left out there.
    """

    def check(device: torch.device, features: CpuFeatures) -> str | None:
        if device.type != "cpu":
            return "runs on the CPU only"
        if features.isa_cap is not None:
            return f"{name} ignores the ISA cap ({features.isa_cap}): its speed would not be the emulated CPU's"
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed"
        return None

    return check


def _needs(
    *conditions: Callable[[torch.device, CpuFeatures], str | None],
) -> Callable[[torch.device, CpuFeatures], str | None]:
    def check(device: torch.device, features: CpuFeatures) -> str | None:
        for condition in conditions:
            reason = condition(device, features)
            if reason is not None:
                return reason
        return None

    return check


def _native_bf16(device: torch.device, features: CpuFeatures) -> str | None:
    if device.type == "cpu" and not features.bf16:
        return "this CPU has no native bfloat16 (it would be emulated, about 5× slower than fp32)"
    return None


def _vnni_without_bf16(device: torch.device, features: CpuFeatures) -> str | None:
    """int8 is tried where it is the only low-precision route: VNNI, but no native bf16.

    Where bf16 exists it is the accurate route: on the demo model static int8 moved
    probabilities by up to 0.11, bf16 with an fp32 stem by 0.007 (the tolerance is 0.02).

    Not on AVX2-only CPUs, although ONNX Runtime's int8 kernels run there and are fast: on a
    2-core EPYC (Zen 3) ResNet50 ran at 29 patches/s in int8 against 14 in ONNX Runtime fp32
    (224 px, untrained). But on the trained demo model int8 moved probabilities by 0.05–0.28,
    whatever was tried (an independent calibration set, 7-bit weights, the stem, layer1,
    layer4 or the classifier left in fp32, symmetric activations), so the check would refuse
    it for every real model, while an untrained network (all the benchmark has at 224 px)
    passes trivially: it would report a speed the dashboard never gets.
    """
    if not features.vnni:
        return "this CPU has no VNNI int8 instructions (on AVX2 alone int8 moved the demo model by 0.05–0.28)"
    if features.bf16:
        return "this CPU has native bf16, the more accurate low-precision route (int8 moved the demo model by 0.11)"
    return None


def _cuda_only(device: torch.device, _: CpuFeatures) -> str | None:
    return None if device.type == "cuda" else "needs a CUDA device"


def _nchw_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A contiguous-format eval copy: what the fp32 eager baseline runs, whatever the original's format."""
    return copy.deepcopy(network).eval().to(memory_format=torch.contiguous_format)


def _for_export(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` itself when no module in it is training, else an eval copy (:func:`_nchw_copy`).

    The exporter sets a network to eval for the trace and back afterwards: one in eval already,
    shared with the engine answering meanwhile, is left as it was, and no 94 MB copy is made
    while every member's torch weights are held. Its memory format does not matter: a
    channels-last ResNet50, as loaded, exports to the same ONNX bytes as an NCHW one (torch 2.14).
    """
    if not any(module.training for module in network.modules()):
        return network
    return _nchw_copy(network)


def _build_torch_eager(network: torch.nn.Module, cfg: PreprocessConfig, device: torch.device) -> Predictor:
    net = _nchw_copy(network).to(device)
    return lambda x: net(x.contiguous())


def _build_torch_cl(
    dtype: torch.dtype | None,
) -> Callable[[torch.nn.Module, PreprocessConfig, torch.device], Predictor]:
    def build(network: torch.nn.Module, cfg: PreprocessConfig, device: torch.device) -> Predictor:
        net = network.eval().to(device).to(memory_format=torch.channels_last)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return net(x.contiguous(memory_format=torch.channels_last)).float()

        return predict

    return build


def _cuda_low_precision() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _build_cuda_autocast(network: torch.nn.Module, cfg: PreprocessConfig, device: torch.device) -> Predictor:
    return _build_torch_cl(_cuda_low_precision())(network, cfg, device)


def _build_compiled(
    dtype: torch.dtype | None,
) -> Callable[[torch.nn.Module, PreprocessConfig, torch.device], Predictor]:
    def build(network: torch.nn.Module, cfg: PreprocessConfig, device: torch.device) -> Predictor:
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config

        net = copy.deepcopy(network).eval().to(memory_format=torch.channels_last)
        compiled = torch.compile(net, dynamic=False)
        chunk = runtime_chunk(cfg.input_px, 1)  # 8 patches at 224 px: activations stay ~100 MB

        def predict(x: torch.Tensor) -> torch.Tensor:
            # Every call must pass the guards of the graph compiled at load: a recompilation would
            # trace the network, whose parameters freezing discarded, and fail. So each chunk is
            # copied into one buffer of one static shape (a ragged last chunk zero-padded), made in
            # inference mode: an ordinary tensor (made outside inference mode, as the benchmark's
            # batches are) carries another dispatch key set, which dynamo guards on. Dynamo also
            # guards on the thread count (nothing here changes it after load) and on autocast's cache
            # flag, which is set rather than inherited from the caller
            n = x.shape[0]
            outs = []
            with torch.inference_mode():
                buffer = torch.empty((chunk, *x.shape[1:]), dtype=torch.float32, memory_format=torch.channels_last)
                for start in range(0, n, chunk):
                    rows = min(chunk, n - start)
                    buffer[:rows] = x[start : start + rows]
                    buffer[rows:] = 0.0
                    with torch.autocast(
                        "cpu", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=True
                    ):
                        outs.append(compiled(buffer).float()[:rows])
                return torch.cat(outs)

        # weights become constants of the compiled graph; the copy's own parameters are then dropped.
        # Each member is a recompilation of the same forward: past dynamo's limit of 8 (5 members in
        # bf16, then 5 in fp32 after a refusal) it would run eager under this backend's name; raised,
        # and a build past it fails instead
        with (
            dynamo_config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True),
            inductor_config.patch(freezing=True, freezing_discard_parameters=True),
        ):
            predict(torch.zeros(chunk, 3, cfg.input_px, cfg.input_px))  # compile now, at load
        return predict

    return build


def export_onnx(network: torch.nn.Module, input_px: int) -> bytes:
    """The network as ONNX (opset 17, dynamic batch), fp32, BatchNorm left unfolded for the runtime to fold."""
    return _export_onnx_from(network, torch.zeros(1, 3, input_px, input_px))


@contextlib.contextmanager
def onnx_files(networks: Sequence[torch.nn.Module], input_px: int, *, park: bool = False) -> Iterator[list[Path]]:
    """Each network's ONNX export (:func:`export_onnx`) as a file, all made first; removed on leaving.

    About 90 MB per 224-px ResNet50, in a temporary directory (``$TMPDIR``: where ``/tmp`` is a
    tmpfs, those files take memory, only not the process's; point it at a disk). Why all first: an
    export is the highest point of a model's loading (about 370 MiB above where it starts, for a
    94 MB network), so it is made while no runtime is held yet. Why files: a runtime given a
    path kept less than one given the bytes (ONNX Runtime about 90 MiB less per member). With
    ``park``, each network's weights are parked (:func:`park_weights`) once it is exported.
    """
    example = torch.zeros(1, 3, input_px, input_px)
    with tempfile.TemporaryDirectory(prefix="icca-onnx-") as folder:
        paths = [Path(folder) / f"member{index + 1}.onnx" for index in range(len(networks))]
        for network, path in zip(networks, paths, strict=True):
            _write_onnx(network, example, str(path))
            if park:
                park_weights(network)
            return_freed_memory()  # the exporter's graph and buffers, before the next export
        yield paths


def park_weights(network: torch.nn.Module) -> None:
    """Move ``network``'s CPU weights out of the process's memory, into a file it maps, in place.

    The network keeps working and gives the same results: its tensors become private
    (copy-on-write) maps of a file in ``$TMPDIR``, unlinked at once (the map keeps its disk
    space until the tensors go), which the system reads back only where something runs the
    network again. Why: while a converted runtime is built, the torch weights (94 MB per 224-px
    ResNet50) are needed only by the default engine answering meanwhile, or by a next backend
    should this one be refused; held in memory, every member's stacked under every runtime
    built (about 470 MiB for five). Left in memory where ``$TMPDIR`` is itself memory (a
    tmpfs), and where the file cannot be written (a full disk): slower to load, never wrong.
    """
    state = network.state_dict()
    if getattr(network, "_icca_parked", False) or any(t.device.type != "cpu" for t in state.values()):
        return
    if temporary_files_in_memory():
        return
    try:
        with tempfile.TemporaryDirectory(prefix="icca-weights-", ignore_cleanup_errors=True) as folder:
            path = Path(folder) / "weights.pt"
            torch.save(state, path)
            mapped = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            path.unlink()
    except (OSError, RuntimeError):
        return
    network.load_state_dict(mapped, assign=True)
    network._icca_parked = True  # type: ignore[assignment]


def unpark_weights(network: torch.nn.Module) -> None:
    """Bring parked weights (:func:`park_weights`) back into memory, for an engine that runs the torch network."""
    if not getattr(network, "_icca_parked", False):
        return
    network.load_state_dict({k: v.clone() for k, v in network.state_dict().items()}, assign=True)
    network._icca_parked = False  # type: ignore[assignment]


def temporary_files_in_memory() -> bool:
    """Whether ``$TMPDIR`` (the system's temporary folder) is a tmpfs or ramfs, whose files take memory.

    Asked of the kernel (``statfs``), which knows the mount in effect there. An overlay whose
    upper layer is a tmpfs reads as an overlay: not recognised. ``False`` where it cannot be asked.
    """
    import ctypes
    import struct

    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.statfs(os.fsencode(tempfile.gettempdir()), buffer) != 0:
            return False
    except (OSError, AttributeError):
        return False
    (kind,) = struct.unpack_from("l", buffer)  # f_type, the first field
    return (kind & 0xFFFFFFFF) in (TMPFS_MAGIC, RAMFS_MAGIC)


def _export_onnx_from(network: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX export of ``network`` traced on ``example``, as bytes."""
    buffer = io.BytesIO()
    _write_onnx(network, example, buffer)
    return buffer.getvalue()


def _write_onnx(network: torch.nn.Module, example: torch.Tensor, destination: io.BytesIO | str) -> None:
    """Export ``network`` traced on ``example`` to ``destination`` (a buffer or a file path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: fast and exact here
        torch.onnx.export(
            _for_export(network),
            (example,),
            destination,
            dynamo=False,
            # the exporter's folding of each BatchNorm into its convolution writes a second set of
            # weights while the first is held: about 90 MiB more at a 224-px ResNet50's export, the
            # highest point of a model's loading; every runtime here folds them itself
            do_constant_folding=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )


def runtime_chunk(input_px: int, bytes_per_value: int) -> int:
    """Patches per call into a runtime: 4 bf16 or 2 fp32 patches at 224 px, more for smaller inputs (≤ 32).

    A runtime keeps activation buffers sized for the largest batch it has seen, for each
    network: 32 patches at 224 px hold about 170 MB (bf16) per ensemble member, 4 about 45 MB,
    at 2–5 % of the speed (measured on this project's AVX-512 BF16 EPYC: OpenVINO bf16 110
    against 112 patches/s, ONNX Runtime fp32 53 against 57). With five members that is the
    difference between a 2 GiB server and a 2.7 GiB one. The chunk keeps that memory the same
    whatever the input size and precision.
    """
    return int(min(INFERENCE_BATCH, max(1, round(8 / bytes_per_value * (224 / input_px) ** 2))))


def _numpy_predictor(run: Callable[[np.ndarray], np.ndarray], lock: bool, chunk: int) -> Predictor:
    """A torch-facing predictor over a runtime that takes NCHW float32 arrays, in chunks of ``chunk`` patches.

    Per-patch results do not depend on the chunking: each patch is computed on its own.
    """
    guard = threading.Lock() if lock else contextlib.nullcontext()

    def predict(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)  # NCHW
        with guard:
            outs = [np.array(run(array[i : i + chunk]), dtype=np.float32) for i in range(0, len(array), chunk)]
        return torch.from_numpy(np.concatenate(outs) if outs else np.empty((0, 0), np.float32))

    return predict


def _ort_session(model: bytes | str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _ort_fp32_from_onnx(path: Path, cfg: PreprocessConfig, device: torch.device) -> Predictor:
    session = _ort_session(str(path))
    # run() is thread-safe
    return _numpy_predictor(lambda a: session.run(None, {"x": a})[0], lock=False, chunk=runtime_chunk(cfg.input_px, 4))


def _ort_int8_from_onnx(path: Path, cfg: PreprocessConfig, device: torch.device) -> Predictor:
    """Static int8 (QDQ, per-channel weights), calibrated on :func:`calibration_patches`.

    Calibrated on other phantoms than the check case, so that the check against fp32 that
    follows is a fair one; on 8 patches, because the calibrator keeps every intermediate
    tensor of every calibration patch (about 100 MB per patch at 224 px; its option to fold
    ranges batch by batch, ``CalibMaxIntermediateOutputs``, fails in ONNX Runtime 1.32 with
    "No data is collected"). Without VNNI, ONNX Runtime's AVX2 kernels multiply with
    ``vpmaddubsw``, whose 16-bit sums can saturate with full-range int8 weights: there
    weights use 7 bits (``reduce_range``), as ONNX Runtime's documentation advises.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from core.inference import to_network_input

    calibration = to_network_input(calibration_patches(cfg), cfg).contiguous().numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration[i : i + 4]} for i in range(0, len(calibration), 4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, int8 = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not detect_cpu_features().vnni,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        session = _ort_session(str(int8))
    return _numpy_predictor(lambda a: session.run(None, {"x": a})[0], lock=False, chunk=runtime_chunk(cfg.input_px, 1))


def _openvino_model(path: Path) -> Any:
    """The network as an OpenVINO model, read from its ONNX export.

    Not through OpenVINO's own torch tracing (``convert_model`` on the module): that path has a
    lower peak, but each conversion left about 25 MiB behind for good (torch 2.14, OpenVINO
    2026.4, a 224-px ResNet50).
    """
    import openvino as ov

    return ov.convert_model(str(path))


def _with_fp16_weights(model: Any) -> Any:
    """``model`` with its float weights stored in fp16 (in place), for a runtime that computes in bf16.

    What OpenVINO's ``save_model`` does by default. The CPU runtime keeps the weights as given
    beside the copy it repacks for its kernels: fp32 ones cost about 44 MiB more per 224-px
    ResNet50 member. Rounding twice (fp32 → fp16 → bf16) is not rounding once, and fp16's range
    is narrower: on the demo model each member's |Δp| against fp32 moved by up to 0.01 either
    way (all-bf16 0.013–0.027 → 0.010–0.034, mixed 0.005–0.012 → 0.005–0.011). The check against
    fp32 decides, on every member, as before. Without OpenVINO's (private) transformation the
    model is left as it is: more memory, nothing else lost.
    """
    try:
        from openvino._offline_transformations import compress_model_transformation
    except ImportError:
        return model
    compress_model_transformation(model)
    return model


def _openvino_from_onnx(precision: str) -> Callable[[Path, PreprocessConfig, torch.device], Predictor]:
    def build(path: Path, cfg: PreprocessConfig, device: torch.device) -> Predictor:
        import openvino as ov

        model = _openvino_model(path)
        if precision == "bf16":
            model = _with_fp16_weights(model)
        compiled = ov.Core().compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",  # one stream using every core: one case at a time
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            },
        )
        request = compiled.create_infer_request()
        # an infer request serves one caller at a time: two sessions analysing at once take turns
        chunk = runtime_chunk(cfg.input_px, 2 if precision == "bf16" else 4)
        return _numpy_predictor(lambda a: request.infer({0: a})[0], lock=True, chunk=chunk)

    return build


def split_resnet(network: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(stem + layer1, layer2 … fc) of a ResNet50 (``models.resnet``): the halves the mixed backend runs in fp32 and bf16."""
    head = torch.nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool, network.layer1)
    tail = torch.nn.Sequential(
        network.layer2, network.layer3, network.layer4, network.avgpool, torch.nn.Flatten(1), network.fc
    )
    return head.eval(), tail.eval()


def _build_openvino_mixed(network: torch.nn.Module, cfg: PreprocessConfig, device: torch.device) -> Predictor:
    """fp32 for the stem and layer1, bf16 from layer2 on (two compiled models, the activation shared).

    Why: a trained network's bf16 error comes mostly from its first layers, where the faint
    texture that carries the signal (a few HU in a 250-HU window) meets bf16's 8-bit mantissa;
    measured on the demo model, all-bf16 moves probabilities by up to 0.034, fp32 stem + layer1
    by 0.011 (both with the fp16 weights of :func:`_with_fp16_weights`). Those layers are a fifth of the arithmetic.
    """
    import openvino as ov

    head, tail = split_resnet(_for_export(network))
    core = ov.Core()
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    with torch.no_grad():
        middle = head(torch.zeros(1, 3, cfg.input_px, cfg.input_px))
    first = core.compile_model(
        ov.convert_model(io.BytesIO(export_onnx(head, cfg.input_px))),
        "CPU",
        {**settings, "INFERENCE_PRECISION_HINT": "f32"},
    )
    second = core.compile_model(
        _with_fp16_weights(ov.convert_model(io.BytesIO(_export_onnx_from(tail, middle)))),
        "CPU",
        {**settings, "INFERENCE_PRECISION_HINT": "bf16"},
    )
    head_request, tail_request = first.create_infer_request(), second.create_infer_request()

    def run(array: np.ndarray) -> np.ndarray:
        head_request.infer({0: array})
        tail_request.set_input_tensor(head_request.get_output_tensor(0))  # no copy between the halves
        tail_request.infer()
        return tail_request.get_output_tensor(0).data.copy()

    return _numpy_predictor(run, lock=True, chunk=runtime_chunk(cfg.input_px, 2))


def _onnx_backend(
    key: str,
    name: str,
    unusable: Callable[[torch.device, CpuFeatures], str | None],
    from_onnx: Callable[[Path, PreprocessConfig, torch.device], Predictor],
) -> Backend:
    """A backend whose runtime reads the network's ONNX export; ``build`` exports to a temporary file first."""

    def build(network: torch.nn.Module, cfg: PreprocessConfig, device: torch.device) -> Predictor:
        with onnx_files([network], cfg.input_px) as (path,):
            return from_onnx(path, cfg, device)

    return Backend(key, name, unusable, build, from_onnx)


# Measured in this order, likely fastest first, so that a slow backend is abandoned after one timed run.
BACKENDS: tuple[Backend, ...] = (
    _onnx_backend(
        "openvino-bf16", "OpenVINO bf16", _needs(_needs_module("openvino"), _native_bf16), _openvino_from_onnx("bf16")
    ),
    Backend(
        "openvino-mixed",
        "OpenVINO bf16, fp32 stem + layer1",
        _needs(_needs_module("openvino"), _native_bf16),
        _build_openvino_mixed,
    ),
    _onnx_backend("onnxruntime-fp32", "ONNX Runtime fp32", _needs_module("onnxruntime"), _ort_fp32_from_onnx),
    _onnx_backend("openvino-fp32", "OpenVINO fp32", _needs_module("openvino"), _openvino_from_onnx("f32")),
    Backend(
        "torch-compile-bf16",
        "torch.compile bf16",
        _needs(_cpu_only, _cpp_compiler, _native_bf16),
        _build_compiled(torch.bfloat16),
    ),
    Backend("torch-compile-fp32", "torch.compile fp32", _needs(_cpu_only, _cpp_compiler), _build_compiled(None)),
    _onnx_backend(
        "onnxruntime-int8",
        "ONNX Runtime int8",
        _needs(_needs_module("onnxruntime"), _vnni_without_bf16),
        _ort_int8_from_onnx,
    ),
    Backend(
        "torch-cl-bf16", "torch channels-last bf16", _needs(_cpu_only, _native_bf16), _build_torch_cl(torch.bfloat16)
    ),
    Backend(DEFAULT_BACKEND, "torch channels-last fp32", _cpu_only, _build_torch_cl(None)),
    Backend(REFERENCE_BACKEND, "torch eager fp32", _cpu_only, _build_torch_eager),
    Backend("torch-cuda-autocast", "torch CUDA bf16/fp16 autocast", _cuda_only, _build_cuda_autocast),
    Backend("torch-cuda-fp32", "torch CUDA fp32", _cuda_only, _build_torch_cl(None)),
)
SLOW_TO_BUILD = ("torch-compile-bf16", "torch-compile-fp32", "onnxruntime-int8")  # 10–30 s each: --quick skips them
BACKENDS_BY_KEY = {b.key: b for b in BACKENDS}


def usable_backends(
    device: torch.device, features: CpuFeatures, backends: Sequence[Backend] = BACKENDS
) -> tuple[list[Backend], dict[str, str]]:
    """(backends that can run here, key → why each other one cannot)."""
    usable, skipped = [], {}
    for backend in backends:
        reason = backend.unusable(device, features)
        if reason is None:
            usable.append(backend)
        else:
            skipped[backend.key] = reason
    return usable, skipped


# ---------------------------------------------------------------- the fixed check case


@functools.lru_cache(maxsize=8)
def _verification_patches_cached(cfg_json: str, n: int) -> np.ndarray:
    from core.imaging import window_to_unit
    from core.lattice import cut_lattice
    from core.phantom import make_patient

    cfg = PreprocessConfig.from_dict(json.loads(cfg_json))
    patient = make_patient("ENGINE-CHECK", 1, "N1", np.random.default_rng(20221), size_mm=55.0)
    grey = window_to_unit(patient.hu, cfg.window_level_hu, cfg.window_width_hu)
    spacing = (patient.spacing_mm, patient.spacing_mm)
    _, patches = cut_lattice(grey, patient.mask, spacing, cfg)
    pick = np.linspace(0, len(patches) - 1, min(n, len(patches))).round().astype(int)
    out = patches[pick]
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _calibration_patches_cached(cfg_json: str, per_patient: int) -> np.ndarray:
    from core.imaging import window_to_unit
    from core.lattice import cut_lattice
    from core.phantom import make_patient

    cfg = PreprocessConfig.from_dict(json.loads(cfg_json))
    rng = np.random.default_rng(20222)  # not the check case's seed
    chunks = []
    for i, (label, n_category) in enumerate(((0, "N0"), (1, "N1"), (1, "N0"), (0, "N1"))):
        patient = make_patient(f"ENGINE-CALIBRATION-{i}", label, n_category, rng)
        grey = window_to_unit(patient.hu, cfg.window_level_hu, cfg.window_width_hu)
        _, patches = cut_lattice(grey, patient.mask, (patient.spacing_mm, patient.spacing_mm), cfg)
        pick = np.linspace(0, len(patches) - 1, min(per_patient, len(patches))).round().astype(int)
        chunks.append(patches[pick])
    out = np.concatenate(chunks)
    out.setflags(write=False)
    return out


def calibration_patches(cfg: PreprocessConfig, per_patient: int = 2) -> np.ndarray:
    """(N, P, P) uint8 patches of 4 other phantoms (both labels, both N categories): int8's calibration set."""
    return _calibration_patches_cached(json.dumps(cfg.to_dict(), sort_keys=True), per_patient).copy()


def verification_patches(cfg: PreprocessConfig, n: int = VERIFY_PATCHES) -> np.ndarray:
    """(n, P, P) uint8 patches of a fixed phantom (seeded, 55 mm tumour) cut with ``cfg``: the check case."""
    return _verification_patches_cached(json.dumps(cfg.to_dict(), sort_keys=True), n).copy()


def max_abs_prob_diff(probs: np.ndarray, reference: np.ndarray) -> float:
    """Largest |Δp| between two (N,) probability arrays (0–1); ``inf`` when one holds a NaN or inf, 0 when N = 0."""
    if not len(probs):
        return 0.0
    diff = float(np.max(np.abs(probs - reference)))
    return diff if np.isfinite(diff) else float("inf")


def reference_probabilities(
    network: Callable[[torch.Tensor], torch.Tensor], patches: np.ndarray, cfg: PreprocessConfig
) -> np.ndarray:
    """(N,) fp32 eager probabilities: what every backend is checked against.

    In batches of 8: fp32 needs no particular batch for its answer, and eager activations for
    32 patches at 224 px would take some 400 MB more at the loading's peak. Runs where the
    network's weights are (a GPU once the default engine has moved them there), else on the CPU.
    """
    return predict_patches(
        lambda x: network(x.contiguous()), patches, cfg, batch_size=8, device=_device_of(network), precision="fp32"
    )


def _device_of(network: Callable[[torch.Tensor], torch.Tensor]) -> torch.device:
    """Where ``network``'s weights are: its inputs must go there too (the CPU for a plain callable)."""
    if isinstance(network, torch.nn.Module):
        for tensor in network.parameters():
            return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------- engines


@dataclass
class Engine:
    """The predictors of a model's networks (one per ensemble member) on one backend.

    Attributes:
        backend: key of :data:`BACKENDS` (or a test's own).
        name: what the sidebar shows ("OpenVINO bf16").
        device: where inputs must be.
        predictors: one per ensemble member, (B, 3, S, S) float32 → (B, C) logits.
        how: how it was chosen, in words ("measured on this machine", "cached choice", "default").
        max_abs_diff: worst |Δp| against fp32 eager on the check case over all members, or
            ``None`` where nothing was checked (the default fp32 engine needs no check).
        patches_per_s: the measured speed of the backend on this machine, when measured.
        set_aside: failed on a request and replaced (:func:`fall_back_to_default`); its
            predictors are dropped, and whoever still holds it is sent to the model's engine.
        notes: what else the description must say, last: faster backends passed over for
            memory, memory figures not yet measured.
    """

    backend: str
    name: str
    device: torch.device
    predictors: tuple[Predictor, ...]
    how: str
    max_abs_diff: float | None = None
    patches_per_s: float | None = None
    set_aside: bool = False
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the model card / sidebar: this engine's own figures first, then the notes.

        The speed is one network's, as measured: an ensemble of K members scores a patch K
        times, so the line says "per network" and how many there are.
        """
        parts = [self.name, self.how]
        if self.patches_per_s:
            members = len(self.predictors)
            each = f" per network ({members} networks)" if members > 1 else ""
            parts.append(f"{self.patches_per_s:.0f} patches/s{each}")
        if self.max_abs_diff is not None:
            parts.append(f"max |Δp| {self.max_abs_diff:.3f} vs fp32")
        return " · ".join([*parts, *self.notes])


def default_engine(
    networks: Sequence[Callable[[torch.Tensor], torch.Tensor]], device: torch.device | None = None
) -> Engine:
    """Plain fp32 on the networks as they are (channels-last on the CPU): exact, instant, never verified.

    Works with any callable (tests' fake predictors included), since nothing is converted.
    """
    device = device or torch.device("cpu")

    def wrap(net: Callable[[torch.Tensor], torch.Tensor]) -> Predictor:
        if isinstance(net, torch.nn.Module):
            net.to(device)  # the inputs are sent to ``device``: the weights must be there too
            if device.type == "cpu":
                return lambda x: net(x.contiguous(memory_format=torch.channels_last))
        return net

    name = "torch channels-last fp32" if device.type == "cpu" else "torch CUDA fp32"
    return Engine(
        DEFAULT_BACKEND if device.type == "cpu" else "torch-cuda-fp32",
        name,
        device,
        tuple(wrap(n) for n in networks),
        "default (no measurement needed)",
    )


@dataclass(frozen=True)
class Candidate:
    """One backend as measured: speed, agreement with fp32 on the measuring model, or why it did not run.

    Attributes:
        patches_per_s: best of the timed batches (the least disturbed by other processes).
        max_abs_diff: max |Δp| against fp32 eager on the check case, for the model measured.
        accepted: within the tolerance for that model (others are checked again per model).
        resident_mib: memory one member's runtime holds once it has run (MiB): the anonymous
            memory it added (weights, repacked copies, buffers), plus the torch network itself
            for a backend that runs it; ``None`` where not measured (a ranking measured before
            this was, or on CUDA, whose memory is not the process's).
        one_time_mib: memory its library took once, whatever the members (torch.compile's first
            compilation about 150 MiB), as a first build on a tiny network added it; the same
            figure for every backend of a library (:func:`share_one_time_memory`: only the first
            one measured sees it), and for OpenVINO and ONNX Runtime the ONNX exporter's too
            (:func:`exporter_one_time_mib`); ``None`` where not measured.
    """

    key: str
    name: str
    patches_per_s: float | None = None
    max_abs_diff: float | None = None
    build_s: float | None = None
    accepted: bool = False
    reason: str | None = None
    resident_mib: float | None = None
    one_time_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed_rate(
    predictor: Predictor,
    patches: np.ndarray,
    cfg: PreprocessConfig,
    device: torch.device,
    repeats: int,
    give_up_below: float = 0.0,
) -> float:
    """Patches/s of :func:`~core.inference.predict_patches` on ``patches``: the fastest of ``repeats`` runs.

    The fastest, not the mean: other processes on the machine only ever slow a run down. A
    backend slower than ``give_up_below`` patches/s on its first run is not run again.
    """
    best = float("inf")
    for attempt in range(max(1, repeats)):
        if attempt and len(patches) / best < give_up_below:
            break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        predict_patches(predictor, patches, cfg, device=device, precision="fp32")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return len(patches) / best


def measure_backend(
    backend: Backend,
    network: torch.nn.Module,
    cfg: PreprocessConfig,
    device: torch.device,
    *,
    reference: np.ndarray,
    patches: np.ndarray,
    repeats: int = 3,
    tolerance: float = MAX_ABS_PROB_DIFF,
    give_up_below: float = 0.0,
) -> tuple[Candidate, Predictor | None]:
    """Build one backend, check it against ``reference`` on ``patches``, then time it.

    The check run also warms the backend up. A backend off by more than ``tolerance`` is still
    timed (another model's weights may pass), but not accepted. Also measures what the runtime
    holds (:attr:`Candidate.resident_mib`). Returns the candidate and its predictor (``None``
    when it could not run).
    """
    before = one_time = None
    if device.type == "cpu" and resident_anonymous_mib() is not None:
        return_freed_memory()  # the previous backend's leftovers are not this one's
        start = resident_anonymous_mib()
        _warm_up(backend, cfg, device, patches[:2])
        return_freed_memory()
        before = resident_anonymous_mib()
        one_time = max(0.0, before - start) if before is not None and start is not None else None
    started = time.perf_counter()
    try:
        predictor = backend.build(network, cfg, device)
        build_s = time.perf_counter() - started
        probs = predict_patches(predictor, patches, cfg, device=device, precision="fp32")
        rate = timed_rate(predictor, patches, cfg, device, repeats, give_up_below)
    except Exception as error:  # a backend that cannot run here is skipped, never fatal
        # its warm-up may still have loaded the library: the one-time memory is the library's, to share
        reason = f"failed: {type(error).__name__}: {error}"[:300]
        return Candidate(backend.key, backend.name, reason=reason, one_time_mib=one_time), None
    held = _held_mib(before, backend.key, network)
    diff = max_abs_prob_diff(probs, reference)
    if not diff <= tolerance:
        reason = f"max |Δp| {diff:.4f} > {tolerance:g} against fp32"
        return Candidate(backend.key, backend.name, rate, diff, build_s, False, reason, held, one_time), predictor
    return Candidate(backend.key, backend.name, rate, diff, build_s, True, None, held, one_time), predictor


ONNX_LIBRARIES = ("openvino", "onnxruntime")  # their backends convert the network through torch's ONNX exporter


def exporter_one_time_mib(cfg: PreprocessConfig) -> float | None:
    """Memory torch's ONNX exporter takes once per process (MiB), measured by exporting a tiny network.

    Every OpenVINO and ONNX Runtime backend goes through the exporter, so whichever of them is
    measured first would otherwise carry it alone (about 15 MiB). ``None`` where resident memory
    cannot be read.
    """
    return_freed_memory()
    start = resident_anonymous_mib()
    with contextlib.suppress(Exception):
        export_onnx(_tiny_network(cfg), cfg.input_px)
    return_freed_memory()
    after = resident_anonymous_mib()
    return max(0.0, after - start) if start is not None and after is not None else None


def _tiny_network(cfg: PreprocessConfig) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(cfg.labels)),
    ).eval()


def _warm_up(backend: Backend, cfg: PreprocessConfig, device: torch.device, patches: np.ndarray) -> None:
    """Build and run ``backend`` once on a tiny network, so that its library's one-time allocations are made.

    What one member's runtime holds is measured after this: torch.compile's first compilation
    alone adds about 150 MiB that later ones do not (OpenVINO and ONNX Runtime about 15–25),
    which counted once per member would pass a fast backend over for memory it does not take.
    A backend that cannot build the tiny network (the mixed one needs a ResNet) is measured as it is.
    """
    tiny = _tiny_network(cfg)
    with contextlib.suppress(Exception):
        predict_patches(backend.build(tiny, cfg, device), patches, cfg, device=device, precision="fp32")


def resident_anonymous_mib() -> float | None:
    """This process's resident anonymous memory in MiB (heap and private mappings, not libraries' code).

    Linux's ``RssAnon``; ``None`` where there is none. Libraries a runtime loads once (OpenVINO's
    plugins, about 160 MiB of file-backed pages) are not counted: they are not per member.
    """
    return process_status_mib("RssAnon")


def _held_mib(before: float | None, key: str, network: torch.nn.Module) -> float | None:
    """MiB a runtime built since ``before`` (:func:`resident_anonymous_mib`) holds, its torch network included where it runs one."""
    if before is None:
        return None
    return_freed_memory()  # the conversion's leftovers are not held
    after = resident_anonymous_mib()
    if after is None:
        return None
    held = max(0.0, after - before)
    if key in TORCH_BACKENDS:  # runs the model's own network, which then stays loaded
        held += sum(t.numel() * t.element_size() for t in [*network.parameters(), *network.buffers()]) / 2**20
    return held


@dataclass(frozen=True)
class Choice:
    """Every usable backend as measured on this machine, fastest first once ranked.

    The speed ranking depends on the machine and the network's shape only; whether a backend
    is exact enough depends on the weights too, so :func:`prepare_engine` walks the ranking
    and takes the first backend that passes the check for the model at hand.
    """

    signature: dict[str, Any]
    candidates: tuple[Candidate, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    measured_at: str = ""

    def ranking(self) -> list[Candidate]:
        """Candidates that ran, fastest first."""
        ran = [c for c in self.candidates if c.patches_per_s is not None]
        return sorted(ran, key=lambda c: -(c.patches_per_s or 0.0))

    @property
    def best(self) -> Candidate:
        """The fastest candidate accepted for the model measured (fp32 eager always is)."""
        return next(c for c in self.ranking() if c.accepted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "candidates": [c.to_dict() for c in self.candidates],
            "skipped": self.skipped,
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        return cls(
            dict(data["signature"]),
            # a ranking stored before the libraries' one-time memory was shared gets it shared here
            share_one_time_memory([Candidate(**c) for c in data["candidates"]]),
            dict(data.get("skipped", {})),
            str(data.get("measured_at", "")),
        )


def machine_signature(
    cfg: PreprocessConfig, num_classes: int, device: torch.device, features: CpuFeatures | None = None
) -> dict[str, Any]:
    """What a measured ranking depends on: the machine, the library versions, the network's shape."""
    features = features or detect_cpu_features()
    versions = {"torch": str(torch.__version__)}
    for module in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            versions[module] = str(__import__(module).__version__)
    signature: dict[str, Any] = {
        "device": device.type,
        "cpu": {k: v for k, v in features.to_dict().items() if k != "isa_class"},
        "versions": versions,
        "network": {"architecture": "resnet50", "num_classes": num_classes, "input_px": cfg.input_px},
        "batch": INFERENCE_BATCH,
    }
    if device.type == "cuda":
        signature["gpu"] = torch.cuda.get_device_name(device)
    return signature


def signature_key(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:24]


def choose_backend(
    network: torch.nn.Module,
    cfg: PreprocessConfig,
    *,
    device: torch.device | None = None,
    backends: Sequence[Backend] = BACKENDS,
    features: CpuFeatures | None = None,
    repeats: int = 3,
    tolerance: float = MAX_ABS_PROB_DIFF,
    log: Callable[[str], None] | None = None,
) -> Choice:
    """Measure every usable backend on ``network``: speed, and agreement with fp32 eager.

    Takes tens of seconds at 224 px (a minute with ``torch.compile``): call it once per machine.
    """
    device = device or default_device()
    features = features or detect_cpu_features()
    usable, skipped = usable_backends(device, features, backends)
    patches = verification_patches(cfg)
    reference = reference_probabilities(network.to(device) if device.type == "cuda" else network, patches, cfg)
    exporter_mib = None
    if device.type == "cpu" and any(library_of(b.key) in ONNX_LIBRARIES for b in usable):
        exporter_mib = exporter_one_time_mib(cfg)  # before any backend, so that none of them counts it
    candidates: list[Candidate] = []
    for backend in usable:
        fastest = max((c.patches_per_s or 0.0 for c in candidates), default=0.0)
        candidate, _ = measure_backend(
            backend,
            network,
            cfg,
            device,
            reference=reference,
            patches=patches,
            repeats=repeats,
            tolerance=tolerance,
            give_up_below=fastest / 2,  # clearly slower: one timed run says enough
        )
        candidates.append(candidate)
        if log is not None:
            log(_candidate_line(candidate))
    if not any(c.accepted for c in candidates):
        raise RuntimeError("no inference backend ran on this machine, not even fp32 eager")
    return Choice(
        machine_signature(cfg, _num_classes(network, cfg), device, features),
        share_one_time_memory(candidates, exporter_mib),
        skipped,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


def measure_machine(
    cfg: PreprocessConfig,
    num_classes: int = 2,
    *,
    keys: Sequence[str] | None = None,
    path: Path | None = None,
    timeout_s: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> Choice | None:
    """Measure this machine's backends in a child process and store the ranking; returns it (``None`` on failure).

    A child process, because measuring builds every backend once: the memory it takes (a
    gigabyte at 224 px) goes back to the system with the child, and a dashboard measuring in
    the background holds no lock while the child works. The ranking depends only on the
    network's shape, so the child measures an untrained ResNet50 of the model's input size.
    """
    import subprocess
    import sys

    path = path or engine_cache_path()
    command = [sys.executable, "-m", "core.engine", "measure", "--preprocess", json.dumps(cfg.to_dict())]
    command += ["--num-classes", str(num_classes)]
    if keys is not None:
        command += ["--only", ",".join(keys)]
    env = {**os.environ, ENGINE_CACHE_ENV: str(path)}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if log is not None:
        for line in done.stdout.splitlines():
            log(line)
        if done.returncode != 0:
            log(f"  measurement failed: {done.stderr.strip().splitlines()[-1:] or ['no message']}")
    return cached_choice(machine_signature(cfg, num_classes, default_device()), path)


def _candidate_line(candidate: Candidate) -> str:
    speed = f"{candidate.patches_per_s:7.1f} patches/s" if candidate.patches_per_s else "  did not run    "
    diff = f"max |Δp| {candidate.max_abs_diff:.4f}" if candidate.max_abs_diff is not None else ""
    held = f"holds {candidate.resident_mib:4.0f} MiB" if candidate.resident_mib is not None else ""
    return f"  {candidate.name:34s} {speed}  {diff}  {held}  {candidate.reason or ''}".rstrip()


def engine_memory_budget_mib() -> float:
    """MiB every member's runtime together may hold: ``$ICCA_ENGINE_MEMORY_MB`` or :data:`DEFAULT_ENGINE_MEMORY_MB`.

    Raises:
        ValueError: the variable is set but not a positive number.
    """
    text = os.environ.get(ENGINE_MEMORY_ENV, "").strip()
    if not text:
        return DEFAULT_ENGINE_MEMORY_MB
    try:
        budget = float(text)
    except ValueError:
        budget = float("nan")
    if not budget > 0:
        raise SettingError(f"{ENGINE_MEMORY_ENV} must be a positive number of MiB, such as 900; it is {text!r}.")
    return budget


def library_of(key: str) -> str:
    """The library a backend's key runs on, whose one-time memory its backends share.

    "openvino-bf16" → "openvino"; torch.compile's compiler (dynamo, inductor) is a library of
    its own beside plain torch, which the dashboard loads whatever the engine.
    """
    return "torch-compile" if key.startswith("torch-compile") else key.split("-", 1)[0]


def share_one_time_memory(candidates: Sequence[Candidate], exporter_mib: float | None = None) -> tuple[Candidate, ...]:
    """``candidates`` with each library's one-time memory given to all of its backends.

    Measured in one process, the first backend of a library takes its one-time memory (loaded
    plugins, a compiler's caches) and those after it find it taken: OpenVINO fp32, measured after
    OpenVINO bf16, would be credited none, yet a dashboard that runs OpenVINO fp32 alone takes it.
    ``exporter_mib`` (:func:`exporter_one_time_mib`), measured apart, is added to each OpenVINO
    and ONNX Runtime backend's: they all go through the exporter.
    """
    once: dict[str, float] = {}
    for c in candidates:
        if c.one_time_mib is not None:
            library = library_of(c.key)
            once[library] = max(once.get(library, 0.0), c.one_time_mib)
    for library in ONNX_LIBRARIES:
        if library in once:
            once[library] += exporter_mib or 0.0
    return tuple(
        replace(c, one_time_mib=once[library_of(c.key)]) if c.one_time_mib is not None else c for c in candidates
    )


def over_memory_budget(candidate: Candidate, members: int, budget_mib: float) -> bool:
    """Whether ``candidate`` would hold more than ``budget_mib`` for ``members`` networks.

    What it holds: its library's one-time memory and each member's runtime. A backend that runs
    the model's own torch networks, no copy, holds nothing the default engine does not (the
    networks are loaded whatever the engine); one whose memory was not measured (a ranking made
    before it was) fits.
    """
    if candidate.key in OWN_NETWORK_BACKENDS or candidate.resident_mib is None:
        return False
    return (candidate.one_time_mib or 0.0) + candidate.resident_mib * members > budget_mib


def _passed_over_note(passed: Sequence[Candidate], members: int, budget_mib: float) -> str:
    """One clause for the engine's description: which faster backends did not fit, and what each member needs."""
    each = ", ".join(
        f"{c.name} ({c.resident_mib:.0f} MiB a member"
        + (f" + {c.one_time_mib:.0f} MiB once" if c.one_time_mib else "")
        + ")"
        for c in passed
    )
    whose = "its member's runtime" if members == 1 else f"its {members} members' runtimes"
    return f"passed over because {whose} would exceed the {budget_mib:.0f} MiB of {ENGINE_MEMORY_ENV}: {each}"


def _num_classes(network: torch.nn.Module, cfg: PreprocessConfig) -> int:
    fc = getattr(network, "fc", None)
    return int(fc.out_features) if isinstance(fc, torch.nn.Linear) else len(cfg.labels)


# ---------------------------------------------------------------- the choice file


def engine_cache_path() -> Path:
    """``$ICCA_ENGINE_CACHE`` or ``data/engine-choice.json`` beside the code."""
    return Path(os.environ.get(ENGINE_CACHE_ENV) or DEFAULT_ENGINE_CACHE)


_FILE_LOCK = threading.Lock()


def _empty_cache() -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "choices": {}, "verified": {}}


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return _empty_cache()
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return _empty_cache()
    data.setdefault("choices", {})
    data.setdefault("verified", {})
    return data


def _update_cache(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Read, edit and atomically rewrite the choice file (a cache: a failure to write is ignored)."""
    with _FILE_LOCK:
        data = _read_cache(path)
        edit(data)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)


def cached_choice(signature: dict[str, Any], path: Path | None = None) -> Choice | None:
    """The ranking measured earlier for this signature, or ``None``."""
    entry = _read_cache(path or engine_cache_path())["choices"].get(signature_key(signature))
    if not entry:
        return None
    try:
        return Choice.from_dict(entry)
    except (KeyError, TypeError):
        return None


def store_choice(choice: Choice, path: Path | None = None) -> None:
    key = signature_key(choice.signature)
    _update_cache(path or engine_cache_path(), lambda data: data["choices"].__setitem__(key, choice.to_dict()))


def forget_choice(signature: dict[str, Any], path: Path | None = None) -> None:
    key = signature_key(signature)
    _update_cache(path or engine_cache_path(), lambda data: data["choices"].pop(key, None))


def _verified_key(signature: dict[str, Any], model_id: str, member: int, backend: str) -> str:
    return f"{signature_key(signature)}|{model_id}#{member}|{backend}@{CHECK_REVISION}"


# ---------------------------------------------------------------- engines for a model


class EngineVerificationError(RuntimeError):
    """A backend's probabilities differ from fp32 by more than the tolerance for this model."""


def build_engine(
    networks: Sequence[torch.nn.Module],
    cfg: PreprocessConfig,
    backend: Backend,
    *,
    device: torch.device | None = None,
    how: str = "",
    model_id: str | None = None,
    signature: dict[str, Any] | None = None,
    path: Path | None = None,
    patches_per_s: float | None = None,
    tolerance: float = MAX_ABS_PROB_DIFF,
    references: dict[int, np.ndarray] | None = None,
) -> Engine:
    """Build ``backend`` for every member and check each against its fp32 reference on the check case.

    Each member's result (pass or fail) is remembered in the choice file under ``model_id``
    (the checkpoint's sha256), so a model is checked once per machine and backend; a
    remembered failure is refused before anything is built.

    In order, for the loading's memory (each step's peak no longer stacks on the runtimes):
    the members' fp32 references on the check case (kept in ``references``, by member index,
    for the next backend tried on the same networks: a dict filled for other networks or
    another ``cfg`` would give wrong checks), their ONNX exports for a runtime that reads ONNX,
    every member's runtime (the first checked at once: a refusal mostly shows there, and the
    others are then not built, though already exported), then the other members' checks.

    Raises:
        EngineVerificationError: a member is off by more than ``tolerance``. This and whatever
            a reference run, an export, a build or a check raises leave after this function lets
            go of the exports and the runtimes built so far; one that the raising frame itself held
            stays alive with the traceback, until the caller's handler ends.
    """
    device = device or default_device()
    path = path or engine_cache_path()
    remember = model_id is not None and signature is not None
    known = _read_cache(path)["verified"] if remember else {}
    keys = [_verified_key(signature, model_id, i, backend.key) if remember else None for i in range(len(networks))]
    for index, key in enumerate(keys):
        if key in known and not float(known[key]) <= tolerance:
            raise EngineVerificationError(
                f"{backend.name} was off by {float(known[key]):.4f} (> {tolerance:g}) on member {index + 1}."
            )
    predictors: list[Any] = []
    references = {} if references is None else references

    def checked(index: int) -> float:
        reference = None if backend.key == REFERENCE_BACKEND else references.get(index)
        diff = _member_diff(predictors[index], reference, cfg, device, known, keys[index], path)
        if not diff <= tolerance:
            raise EngineVerificationError(
                f"{backend.name} is off by {diff:.4f} (> {tolerance:g}) on member {index + 1}; it is not used."
            )
        return diff

    worst = 0.0
    try:
        unchecked = [i for i, key in enumerate(keys) if key not in known and i not in references]
        if backend.key != REFERENCE_BACKEND and unchecked:
            # before any runtime exists: a reference run's activations and allocator leftovers (about
            # 200 MiB at 224 px) would otherwise come on top of every runtime built
            patches = verification_patches(cfg)
            references.update({i: reference_probabilities(networks[i], patches, cfg) for i in unchecked})
            return_freed_memory()
        # a runtime that reads ONNX gets every member's export made first, while none is held
        # parked once exported: from there on this backend reads the files, not the torch weights
        exports = onnx_files(networks, cfg.input_px, park=True) if backend.from_onnx else contextlib.nullcontext([])
        with exports as paths:
            for index, network in enumerate(networks):
                if backend.from_onnx is not None:
                    predictors.append(backend.from_onnx(paths[index], cfg, device))
                else:
                    predictors.append(backend.build(network, cfg, device))
                    if backend.key not in TORCH_BACKENDS:  # converted: the runtime holds its own weights
                        park_weights(network)
                # a conversion leaves its intermediate graph behind: hand it back before the next
                # member converts, or the load peaks at every member's leftovers at once
                return_freed_memory()
                if index == 0:
                    worst = checked(0)  # a refusal mostly shows on the first member: no more builds then
        # the others are checked once all are built: a runtime that has run holds its repacked weights
        # and buffers (about 60 MiB per 224-px ResNet50 in bf16), which would stack under every later
        # conversion's peak
        for index in range(1, len(networks)):
            worst = max(worst, checked(index))
    except BaseException:
        # a refusal, a failed conversion or running out of memory: the runtimes built so far go before
        # the error leaves, so the caller's next backend does not build beside them (the traceback
        # keeps this frame, and with it these locals, alive until the caller's handler ends)
        predictors.clear()
        return_freed_memory()
        raise
    return Engine(backend.key, backend.name, device, tuple(predictors), how, worst, patches_per_s)


def _member_diff(
    predictor: Any,
    reference: np.ndarray | None,
    cfg: PreprocessConfig,
    device: torch.device,
    known: dict[str, Any],
    key: str | None,
    path: Path,
) -> float:
    """Max |Δp| of ``predictor`` against ``reference``, the member's fp32 probabilities on the check case.

    Remembered under ``key``.

    Returns:
        The largest absolute difference in P(early recurrence) over the check patches (0–1; ``inf``
        when a probability is not finite); the remembered figure when this member was checked
        before; 0 without a reference (the fp32 reference backend itself).
    """
    if key is not None and key in known:
        return float(known[key])
    if reference is None:
        return 0.0
    patches = verification_patches(cfg)
    diff = max_abs_prob_diff(predict_patches(predictor, patches, cfg, device=device, precision="fp32"), reference)
    if key is not None:
        _update_cache(path, lambda data: data["verified"].__setitem__(key, diff))
    return diff


def prepare_engine(
    model: Any,
    *,
    measure: bool = True,
    device: torch.device | None = None,
    path: Path | None = None,
    backends: Sequence[Backend] = BACKENDS,
    tolerance: float = MAX_ABS_PROB_DIFF,
    isolate: bool | None = None,
    store: bool = True,
    log: Callable[[str], None] | None = None,
) -> Engine:
    """Give ``model`` (a :class:`models.checkpoint.LoadedModel`) the fastest engine that is exact enough for it.

    Uses this machine's cached ranking of backends, measuring it first when there is none
    and ``measure`` is true (tens of seconds, once; in a child process when ``isolate``, the
    default for the built-in backends); walks it fastest first and takes the first backend
    whose every member passes the check (|Δp| ≤ ``tolerance`` against fp32 on the check
    case). A backend whose runtimes would hold more than the memory budget for this many
    members (:func:`over_memory_budget`) is passed over, and said so in ``engine.notes``.
    Without a ranking, or when nothing faster passes, the default fp32 engine stays.
    ``store=False`` keeps a ranking measured now out of the choice file (a partial one).
    Sets and returns ``model.engine``.
    """
    device = device or default_device()
    path = path or engine_cache_path()
    networks = list(model.ensemble)
    cfg = model.preprocess
    if any(isinstance(n, ReleasedNetwork) for n in networks) and model.engine is not None:
        return model.engine  # already converted, and the torch weights are gone
    if not all(isinstance(n, torch.nn.Module) for n in networks):
        model.engine = default_engine(networks, device)  # fake predictors: nothing to convert
        return model.engine
    budget = engine_memory_budget_mib()  # a mistyped budget is said before any work
    num_classes = _num_classes(networks[0], cfg)
    features = detect_cpu_features()  # once: it reads /proc/cpuinfo
    signature = machine_signature(cfg, num_classes, device, features)
    choice = cached_choice(signature, path)
    how = "chosen by measurement on this machine (cached)"
    if measure and lacks_memory_figures(choice, device):
        choice = None  # ranked before memory was measured: measured again, once
    if choice is None and measure:
        isolate = all(b in BACKENDS for b in backends) if isolate is None else isolate
        if isolate and store:
            choice = measure_machine(cfg, num_classes, keys=[b.key for b in backends], path=path, log=log)
        else:
            choice = choose_backend(networks[0], cfg, device=device, backends=backends, tolerance=tolerance, log=log)
            if store:
                store_choice(choice, path)
        how = "chosen by measurement on this machine"
    engine = default_engine(networks, device)
    if choice is None:
        engine.how = "default: this machine has not been measured yet"
        model.engine = engine
        return engine
    by_key = {b.key: b for b in backends}
    model_id = getattr(model, "cache_id", None)
    references: dict[int, np.ndarray] = {}  # the members' fp32 references, computed once for every backend tried
    unweighed = lacks_memory_figures(choice, device)  # still, where measuring failed or was not allowed
    passed_over = ["memory per member not measured yet (`python -m core.engine` measures it)"] if unweighed else []
    too_big: list[Candidate] = []
    for candidate in choice.ranking():
        backend = by_key.get(candidate.key)
        if backend is None or backend.unusable(device, features) is not None:
            continue
        if candidate.key == engine.backend:
            engine.how, engine.patches_per_s = how, candidate.patches_per_s
            break
        if over_memory_budget(candidate, len(networks), budget):
            too_big.append(candidate)
            if log is not None:
                log(f"  {_passed_over_note([candidate], len(networks), budget)}")
            continue
        try:
            engine = build_engine(
                networks,
                cfg,
                backend,
                device=device,
                how=how,
                model_id=model_id,
                signature=signature,
                path=path,
                patches_per_s=candidate.patches_per_s,
                tolerance=tolerance,
                references=references,
            )
            break
        except EngineVerificationError as error:
            if log is not None:
                log(f"  {backend.name}: not used for this model ({error})")
        except Exception as error:  # a backend that fails to build here is passed over
            if log is not None:
                log(f"  {backend.name}: failed to build ({type(error).__name__}: {error})")
        # only a failure gets here: its runtimes went with the traceback at the end of its handler,
        # so hand their memory back before the next backend converts
        return_freed_memory()
    if too_big:
        passed_over.append(_passed_over_note(too_big, len(networks), budget))
    engine.notes = tuple(passed_over)
    if engine.backend in TORCH_BACKENDS:  # it runs the torch networks: parked weights come back into memory
        for network in networks:
            unpark_weights(network)
    model.engine = engine
    return engine


def memory_measured(choice: Choice) -> bool:
    """Whether ``choice`` records what its backends' runtimes hold (rankings made before it did not)."""
    return any(c.resident_mib is not None for c in choice.candidates)


def lacks_memory_figures(choice: Choice | None, device: torch.device) -> bool:
    """A CPU ranking without memory figures on a machine that can measure them (Linux): one made before they were."""
    return (
        choice is not None
        and device.type == "cpu"
        and not memory_measured(choice)
        and resident_anonymous_mib() is not None
    )


# one model's engine and networks change under it: the background preparation releasing the torch
# networks, and an analysis falling back to them, never interleave
_MODEL_SWAP = threading.Lock()


class ReleasedNetwork:
    """Stands in for a member network whose torch weights were released (the engine holds its own copy)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model's torch weights were released after its engine was built; reload the model")


def release_networks(model: Any) -> bool:
    """Drop ``model``'s references to its torch networks when its engine does not run them; returns whether it did.

    A converted engine (OpenVINO, ONNX Runtime, a compiled graph) holds its own copy of the
    weights, so the torch copy (100 MB per ResNet50 member) is dead weight in a server. Any
    analysis still running on an earlier engine keeps the networks it uses alive until it ends.
    """
    with _MODEL_SWAP:
        engine = getattr(model, "engine", None)
        if engine is None or engine.set_aside or engine.backend in TORCH_BACKENDS:
            return False
        count = len(model.ensemble)
        model.network = ReleasedNetwork()
        model.members = tuple(ReleasedNetwork() for _ in range(count)) if count > 1 else ()
    return_freed_memory()
    return True


def return_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps small freed blocks otherwise).

    A ResNet50's weights are 161 tensors, most under glibc's 128 kB mmap threshold: freed,
    they stay in the process's heap and its resident size unless trimmed.
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def prepare_engine_in_background(
    model: Any,
    *,
    measure: bool = True,
    path: Path | None = None,
    release: bool = True,
    backends: Sequence[Backend] = BACKENDS,
) -> threading.Thread:
    """Give ``model`` the default engine now and its chosen engine when built (a daemon thread).

    What the dashboard calls at model load: no request waits for a measurement (done in a
    child process) or a compilation; the swap is one attribute assignment, and an analysis
    reads the engine once. With ``release``, the torch weights are dropped once a converted
    engine runs (:func:`release_networks`).
    """
    model.engine = default_engine(list(model.ensemble), default_device())
    model.engine.how = "default while the measured choice is being prepared"

    default = model.engine

    def work() -> None:
        try:
            prepare_engine(model, measure=measure, path=path, backends=backends)
        except UserFacingError as error:  # the default stays: slower, never wrong; the sidebar says why
            default.how = f"default: the measured choice could not be prepared ({error})"
            return
        except Exception:  # a runtime's own message is no sentence for the sidebar: it goes to the log
            logger.warning("the measured engine could not be prepared; the default engine answers", exc_info=True)
            default.how = "default: the measured choice could not be prepared (the reason is in the log)"
            return
        if release:
            release_networks(model)

    thread = threading.Thread(target=work, name="engine-preparation", daemon=True)
    thread.start()
    return thread


class EngineFault(RuntimeError):
    """A runtime's own failure while answering: not the caller's input, not memory running out."""


def guarded(predictor: Predictor) -> Predictor:
    """``predictor`` whose failures become :class:`EngineFault`, except memory running out and sentences.

    Memory running out is left as it is: falling back would read every network again. A
    :class:`~core.errors.UserFacingError` (an :func:`unavailable_engine`'s) is already one sentence.
    """

    def call(x: torch.Tensor) -> torch.Tensor:
        try:
            return predictor(x)
        except UserFacingError:
            raise
        except Exception as error:
            if out_of_memory(error):
                raise
            raise EngineFault(str(error) or type(error).__name__) from error

    return call


def fall_back_to_default(model: Any, failed: Engine) -> Engine:
    """Put ``model`` on the default fp32 engine after its engine ``failed`` on a request; returns the engine to use.

    A runtime that fails on a request (a library fault, a state its compiled graph cannot
    meet) is set aside until the process restarts, and the sidebar says so. Its predictors
    are dropped once its replacement is in place (its runtimes go once the analyses still
    running on them end); torch weights released for it are read again from the model's
    file. When they cannot be, the model's engine becomes one that says why on every
    request; when memory runs out meanwhile, nothing changes and the error goes to the
    caller (the next request tries again). Two analyses failing at once fall back once.
    """
    with _MODEL_SWAP:
        current = getattr(model, "engine", None)
        if current is not None and current is not failed and not current.set_aside:
            return current  # another analysis has fallen back already
        try:
            if any(isinstance(network, ReleasedNetwork) for network in model.ensemble):
                restore_networks(model)
            for network in model.ensemble:  # parked for the conversion, never released: read back into memory
                unpark_weights(network)
            replacement = default_engine(list(model.ensemble), default_device())
            replacement.how = (
                f"the standard engine: the faster {failed.name} stopped working during an analysis and is set aside "
                "until the app restarts (slower; on the fixed check case the two engines agreed within 0.02)"
            )
        except UserFacingError as problem:
            replacement = unavailable_engine(len(model.ensemble), str(problem))
        except Exception as error:
            if out_of_memory(error):
                raise
            replacement = unavailable_engine(
                len(model.ensemble),
                f"The model's networks could not be read again ({type(error).__name__}); restart the app.",
            )
        model.engine = replacement
        failed.set_aside = True
        failed.predictors = ()
        return replacement


def unavailable_engine(members: int, sentence: str) -> Engine:
    """An engine whose every answer is ``sentence``: the model's networks cannot run until the app restarts."""

    def refuse(x: torch.Tensor) -> torch.Tensor:
        raise CheckpointError(sentence) from None  # a fresh error each time: nothing of a request is kept

    return Engine("unavailable", "no engine (restart needed)", torch.device("cpu"), (refuse,) * members, sentence)


def restore_networks(model: Any) -> None:
    """Read ``model``'s torch networks again from its file, after :func:`release_networks`.

    Raises:
        CheckpointError: the file is gone, no longer the one the model was loaded from (its
            sha256, compared before it is read), or no longer allowed.
    """
    from models.checkpoint import load_checkpoint

    path = Path(model.path)
    if not path.is_file():
        raise CheckpointError(
            f"The model's networks cannot be read again: {path.name} is gone or changed since it was loaded; "
            "restart the app to load the model again."
        )
    fresh = load_checkpoint(path, expected_sha256=model.sha256)
    model.network, model.members = fresh.network, fresh.members


def engine_of(model: Any) -> Engine:
    """The model's engine, or the default one when none was prepared (what CV scores with)."""
    engine = getattr(model, "engine", None)
    return engine if engine is not None else default_engine(list(model.ensemble), torch.device("cpu"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.engine [--model PATH] [--remeasure]``: measure and cache this machine's choice.

    ``python -m core.engine measure --preprocess JSON`` is the child process of
    :func:`measure_machine`: it measures an untrained ResNet50 and stores the ranking.
    """
    import argparse

    from models.checkpoint import configured_model_path, load_checkpoint

    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv and argv[0] == "measure":
        child = argparse.ArgumentParser(prog="python -m core.engine measure")
        child.add_argument("--preprocess", required=True, help="PreprocessConfig fields as JSON")
        child.add_argument("--num-classes", type=int, default=2)
        child.add_argument("--only", default=None, help="comma-separated backend keys")
        options = child.parse_args(argv[1:])
        from models.resnet import build_resnet50

        cfg = PreprocessConfig.from_dict(json.loads(options.preprocess))
        keys = options.only.split(",") if options.only else None
        chosen = [b for b in BACKENDS if keys is None or b.key in keys]
        network = build_resnet50(num_classes=options.num_classes, seed=0).eval()
        store_choice(choose_backend(network, cfg, backends=chosen, log=print))
        return 0

    parser = argparse.ArgumentParser(prog="python -m core.engine", description=main.__doc__)
    parser.add_argument("--model", default=None, help="checkpoint (default: the configured model)")
    parser.add_argument("--remeasure", action="store_true", help="measure even when a choice is cached")
    args = parser.parse_args(argv)
    model = load_checkpoint(Path(args.model) if args.model else configured_model_path())
    features = detect_cpu_features()
    print(f"CPU: {features.model} ({features.isa_class}; {', '.join(sorted(features.flags)) or 'no AVX2'})")
    if args.remeasure:
        forget_choice(
            machine_signature(model.preprocess, _num_classes(model.network, model.preprocess), default_device())
        )
    engine = prepare_engine(model, log=print)
    print(f"engine: {engine.describe()}  (cache: {engine_cache_path()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
