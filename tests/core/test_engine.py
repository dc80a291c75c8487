"""The inference engine: CPU features, verified choice among backends, the choice file, real backends.

Fake backends are exact or off by a known amount, as MONAI tests its inferers with trivial
predictors; nothing here is timed (which backend is "faster" is made so by construction).
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from core import engine as engines
from core.cpu import detect_cpu_features
from core.engine import (
    Backend,
    EngineVerificationError,
    ReleasedNetwork,
    build_engine,
    cached_choice,
    choose_backend,
    default_engine,
    machine_signature,
    prepare_engine,
    prepare_engine_in_background,
    release_networks,
    verification_patches,
)
from core.inference import predict_patches, to_network_input
from core.preprocess import PreprocessConfig
from models.checkpoint import LoadedModel

CFG = PreprocessConfig(target_spacing_mm=0.5, patch_px=16, stride_px=8, input_px=32)
ZEN4 = "model name\t: AMD EPYC 9004\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni avx_vnni fma\n"
ZEN3 = "model name\t: AMD EPYC 7003\nflags\t\t: fpu sse avx2 fma\n"


class MeanBrightness(torch.nn.Module):
    """Logits whose softmax gives P(positive) = mean of the de-normalised input (+ ``shift``), exactly."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = ((x[:, 0] * CFG.std + CFG.mean).mean(dim=(1, 2)) + self.shift).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def _model(cache_id: str = "model-a", members: int = 1) -> LoadedModel:
    nets = tuple(MeanBrightness(shift=0.05 * k) for k in range(members))  # members differ: no mix-up passes
    return LoadedModel(nets[0], CFG, {}, "0" * 64, Path("m.pt"), members=nets if members > 1 else (), cache_id=cache_id)


def _fake_backends(builds: list[str]) -> list[Backend]:
    """ "off": fastest but moves probabilities by up to ~0.07; "exact": slower, exact; "broken": cannot build."""

    def usable(device: torch.device, features: object) -> None:
        return None

    def off(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        builds.append("off")
        shift = torch.tensor([0.0, 0.3])
        return lambda x: net(x) + shift

    def exact(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        builds.append("exact")

        def predict(x: torch.Tensor) -> torch.Tensor:
            # slower than "off" by construction, so the ranking puts "off" first: by so much that a loaded
            # machine (a CI neighbour, a benchmark beside the tests) cannot turn the order round
            time.sleep(0.1)
            return net(x)

        return predict

    def broken(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        raise RuntimeError("no such runtime here")

    return [Backend("off", "fast but off", usable, off), Backend("exact", "exact", usable, exact),
            Backend("broken", "broken", usable, broken)]  # fmt: skip


def test_cpu_features_from_cpuinfo_and_isa_caps() -> None:
    zen4 = detect_cpu_features(ZEN4, env={})
    assert (zen4.avx2, zen4.avx512, zen4.bf16, zen4.vnni, zen4.isa_class) == (True, True, True, True, "avx512-bf16")
    zen3 = detect_cpu_features(ZEN3, env={})
    assert (zen3.avx2, zen3.avx512, zen3.bf16, zen3.vnni, zen3.isa_class) == (True, False, False, False, "avx2")
    capped = detect_cpu_features(ZEN4, env={"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    assert capped.flags == frozenset({"avx2"}) and capped.isa_cap == "avx2" and capped.isa_class == "avx2"
    assert detect_cpu_features(ZEN4, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}).bf16 is False
    assert detect_cpu_features(ZEN4, env={"ATEN_CPU_CAPABILITY": "default"}).avx2 is False


def test_capped_cpu_leaves_out_bf16_and_runtimes_that_ignore_the_cap() -> None:
    capped = detect_cpu_features(ZEN4, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    usable, skipped = engines.usable_backends(torch.device("cpu"), capped)
    keys = {b.key for b in usable}
    assert {"torch-cl-bf16", "openvino-bf16", "openvino-mixed", "torch-compile-bf16"} <= set(skipped)
    assert "onnxruntime-fp32" in skipped and "openvino-fp32" in skipped  # they would run AVX-512 anyway
    assert {"torch-eager-fp32", "torch-cl-fp32", "torch-compile-fp32"} <= keys
    # int8 only where there is VNNI but no native bf16
    assert "onnxruntime-int8" in engines.usable_backends(torch.device("cpu"), detect_cpu_features(ZEN4, env={}))[1]


def test_verification_rejects_a_backend_off_by_more_than_the_tolerance(tmp_path: Path) -> None:
    builds: list[str] = []
    off = _fake_backends(builds)[0]
    with pytest.raises(EngineVerificationError, match=r"off by 0\.0\d+ \(> 0\.02\)"):
        build_engine([MeanBrightness()], CFG, off, device=torch.device("cpu"), path=tmp_path / "c.json")
    # the same shift passes a looser tolerance: the check, not the backend, decides
    engine = build_engine([MeanBrightness()], CFG, off, device=torch.device("cpu"), tolerance=0.2)
    assert 0.02 < engine.max_abs_diff <= 0.2


def test_the_fastest_backend_that_passes_the_check_is_chosen_and_remembered(tmp_path: Path) -> None:
    builds: list[str] = []
    backends = _fake_backends(builds)
    path = tmp_path / "choice.json"
    model = _model()
    engine = prepare_engine(model, backends=backends, path=path, device=torch.device("cpu"))
    assert engine.backend == "exact" and model.engine is engine and engine.max_abs_diff < 1e-6
    choice = cached_choice(machine_signature(CFG, 2, torch.device("cpu")), path)
    assert choice is not None and choice.ranking()[0].key == "off"  # fastest, yet not used
    by_key = {c.key: c for c in choice.candidates}
    assert by_key["off"].max_abs_diff > 0.02 and not by_key["off"].accepted
    assert by_key["broken"].reason.startswith("failed: RuntimeError") and by_key["broken"].patches_per_s is None
    # a second load of the same model: no measurement, and "off" is refused from memory, unbuilt
    builds.clear()
    again = prepare_engine(_model(), backends=backends, path=path, device=torch.device("cpu"))
    assert again.backend == "exact" and builds == ["exact"]
    # another model is checked afresh (its weights might pass)
    builds.clear()
    prepare_engine(_model("model-b"), backends=backends, path=path, device=torch.device("cpu"))
    assert builds == ["off", "exact"]
    saved = json.loads(path.read_text())
    assert any("model-a#0|off" in key for key in saved["verified"])


def test_every_member_of_an_ensemble_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    backends = _fake_backends(builds)
    prepare_engine(_model("measuring"), backends=backends, path=tmp_path / "c.json")  # measures the machine
    builds.clear()
    real = engines.reference_probabilities
    monkeypatch.setattr(engines, "reference_probabilities", lambda *args: builds.append("reference") or real(*args))
    engine = prepare_engine(_model(members=3), backends=backends, path=tmp_path / "c.json")
    assert len(engine.predictors) == 3
    # every member's fp32 reference before any runtime, once for both backends tried; "off" fails member 1
    assert builds == ["reference"] * 3 + ["off", "exact", "exact", "exact"]


def test_each_members_leftovers_are_handed_back_before_the_next_member_converts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # measured: OpenVINO fp32 for 5 members at 224 px loaded at 2,345 MiB without this, 1,909 with it
    builds: list[str] = []
    exact = _fake_backends(builds)[1]
    monkeypatch.setattr(engines, "return_freed_memory", lambda: builds.append("trim"))
    build_engine([MeanBrightness()] * 3, CFG, exact, device=torch.device("cpu"), path=tmp_path / "c.json")
    assert builds == ["trim"] + ["exact", "trim"] * 3  # the first: the fp32 references' leftovers


def test_without_a_measured_choice_and_measure_false_the_default_stays(tmp_path: Path) -> None:
    model = _model()
    engine = prepare_engine(model, measure=False, backends=_fake_backends([]), path=tmp_path / "none.json")
    assert engine.backend == engines.DEFAULT_BACKEND and "not been measured" in engine.describe()
    assert not (tmp_path / "none.json").exists()


def test_fake_predictors_get_the_default_engine(tmp_path: Path) -> None:
    model = LoadedModel(lambda x: x[:, :2, 0, 0], CFG, {}, "", Path())
    assert prepare_engine(model, path=tmp_path / "c.json").backend == engines.DEFAULT_BACKEND


def test_background_preparation_swaps_the_engine_in(tmp_path: Path) -> None:
    model = _model()
    thread = prepare_engine_in_background(model, path=tmp_path / "c.json", backends=_fake_backends([]), release=False)
    assert model.engine is not None  # usable at once
    thread.join(timeout=120)
    assert model.engine.backend == "exact"


def test_release_drops_the_torch_weights_but_keeps_the_members(tmp_path: Path) -> None:
    model = _model(members=2)
    prepare_engine(model, backends=_fake_backends([]), path=tmp_path / "c.json")
    assert release_networks(model)
    assert len(model.ensemble) == 2 and all(isinstance(n, ReleasedNetwork) for n in model.ensemble)
    assert model.names == ("member 1", "member 2")
    with pytest.raises(RuntimeError, match="released"):
        model.network(torch.zeros(1))
    assert prepare_engine(model, path=tmp_path / "c.json") is model.engine  # nothing left to convert


def test_default_engine_runs_modules_channels_last_and_callables_as_they_are() -> None:
    patches = verification_patches(CFG)[:5]
    engine = default_engine([MeanBrightness()])
    probs = predict_patches(engine.predictors[0], patches, CFG, precision="fp32")
    np.testing.assert_allclose(probs, patches.reshape(5, -1).mean(axis=1) / 255.0, atol=2e-3)


def test_check_case_is_fixed() -> None:
    a, b = verification_patches(CFG), verification_patches(CFG)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == (32, 16, 16)


REAL = ["torch-cl-fp32", "onnxruntime-fp32", "openvino-fp32", "openvino-bf16", "openvino-mixed", "torch-cl-bf16"]


@pytest.mark.parametrize("key", REAL)
def test_real_backends_agree_with_fp32(key: str) -> None:
    """Each real backend this machine can run, on a real (untrained) ResNet50 at a small input."""
    from models.resnet import build_resnet50

    backend = engines.BACKENDS_BY_KEY[key]
    reason = backend.unusable(torch.device("cpu"), detect_cpu_features())
    if reason is not None:
        pytest.skip(reason)
    network = build_resnet50(seed=0).eval()
    patches = verification_patches(CFG)[:12]
    reference = engines.reference_probabilities(network, patches, CFG)
    predictor = backend.build(network, CFG, torch.device("cpu"))
    probs = predict_patches(predictor, patches, CFG, precision="fp32")
    assert probs.shape == (12,) and np.max(np.abs(probs - reference)) <= engines.MAX_ABS_PROB_DIFF


def test_a_compiled_network_answers_tensors_made_in_or_out_of_inference_mode() -> None:
    """Its graph is compiled once, at load, and its parameters discarded: every call must reuse that graph.

    A whole chunk made outside inference mode (as the benchmark makes its batches) failed
    dynamo's guards on the graph compiled at load; the recompilation traced the discarded
    weights and raised. Whole chunks, ragged ones, several at once, grad mode and inference
    mode all reuse the one graph now.
    """
    from models.resnet import build_resnet50

    backend = engines.BACKENDS_BY_KEY["torch-compile-fp32"]
    reason = backend.unusable(torch.device("cpu"), detect_cpu_features())
    if reason is not None:
        pytest.skip(reason)
    chunk = engines.runtime_chunk(CFG.input_px, 1)
    patches = verification_patches(CFG)
    patches = np.concatenate([patches] * (-(-(chunk + 8) // len(patches))))[: chunk + 8]  # a chunk and a ragged one
    network = build_resnet50(seed=0).eval()
    reference = engines.reference_probabilities(network, patches, CFG)
    predictor = backend.build(network, CFG, torch.device("cpu"))
    ordinary = to_network_input(patches, CFG)  # made in grad mode: not an inference tensor
    with torch.inference_mode():
        inference = to_network_input(patches, CFG)
        answers = [predictor(ordinary[:chunk]), predictor(ordinary), predictor(inference), predictor(inference[:5])]
    answers.append(predictor(ordinary))  # called in grad mode too
    for logits in answers:
        probs = torch.softmax(logits, 1)[:, CFG.positive_index].numpy()
        assert np.max(np.abs(probs - reference[: len(probs)])) <= 1e-4


def test_torch_compile_is_left_out_without_a_cpp_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    for key in ("torch-compile-fp32", "torch-compile-bf16"):
        reason = engines.BACKENDS_BY_KEY[key].unusable(torch.device("cpu"), detect_cpu_features())
        assert reason is not None and "C++ compiler" in reason


def test_export_uses_a_loaded_network_as_it_is_and_leaves_it_unchanged(test_checkpoint: Path) -> None:
    """No copy of a loaded member (channels-last, eval): its ONNX is an NCHW copy's, and the member is untouched."""
    from models.checkpoint import load_checkpoint

    loaded = load_checkpoint(test_checkpoint).network
    before = {name: (tensor, tensor.clone()) for name, tensor in loaded.state_dict(keep_vars=True).items()}
    assert engines._for_export(loaded) is loaded
    assert engines.export_onnx(loaded, 32) == engines.export_onnx(engines._nchw_copy(loaded), 32)
    after = loaded.state_dict(keep_vars=True)
    assert all(after[name] is tensor and torch.equal(tensor, value) for name, (tensor, value) in before.items())
    assert not any(m.training for m in loaded.modules())
    assert loaded.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_export_copies_a_network_with_any_module_in_training_and_leaves_it_training() -> None:
    from models.resnet import build_resnet50

    training = build_resnet50(seed=0)
    half = build_resnet50(seed=0).eval()
    half.layer4.train()  # eval at the top, one block training: the exporter's eval switch would stick
    for network in (training, half):
        exported = engines._for_export(network)
        assert exported is not network and not any(m.training for m in exported.modules())
        engines.export_onnx(network, 32)
    assert training.training and half.layer4.training and not half.training


def test_choose_backend_measures_real_torch_backends() -> None:
    from models.resnet import build_resnet50

    keys = ("torch-cl-fp32", "torch-eager-fp32")
    choice = choose_backend(
        build_resnet50(seed=0).eval(), CFG, backends=[engines.BACKENDS_BY_KEY[k] for k in keys], repeats=1
    )
    assert {c.key for c in choice.candidates} == set(keys) and all(c.accepted for c in choice.candidates)
    assert choice.best.patches_per_s > 0 and choice.signature["network"]["input_px"] == 32
    if engines.resident_anonymous_mib() is not None:
        # both run the model's own network (90 MiB), eager on a copy of it besides
        held = {c.key: c.resident_mib for c in choice.candidates}
        assert 85 < held["torch-cl-fp32"] < 150 and 170 < held["torch-eager-fp32"] < 260


def test_what_a_runtime_holds_is_measured() -> None:
    if engines.resident_anonymous_mib() is None:
        pytest.skip("needs Linux's RssAnon")
    megabytes = 64

    def hoarding(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        held = np.ones(megabytes * 2**20, dtype=np.uint8)  # pages written: resident
        return lambda x: net(x) + float(held[0]) * 0

    def leaving_garbage(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        # a conversion's leftovers, in blocks small enough (64 KiB) to stay in the heap once freed: not held
        blocks = [np.ones(2**16, dtype=np.uint8) for _ in range(megabytes * 16)]
        del blocks
        return net

    patches = verification_patches(CFG)
    reference = engines.reference_probabilities(MeanBrightness(), patches, CFG)
    figures = {}
    for build in (hoarding, leaving_garbage):
        backend = Backend(build.__name__, build.__name__, lambda device, features: None, build)
        candidate, _ = engines.measure_backend(
            backend, MeanBrightness(), CFG, torch.device("cpu"), reference=reference, patches=patches, repeats=1
        )
        figures[build.__name__] = candidate.resident_mib
    assert megabytes - 8 < figures["hoarding"] < megabytes + 24
    assert figures["leaving_garbage"] < 16


_LIBRARY_STATE: list[np.ndarray] = []


def test_a_librarys_one_time_memory_is_measured_apart_from_what_each_member_holds() -> None:
    if engines.resident_anonymous_mib() is None:
        pytest.skip("needs Linux's RssAnon")

    def library_with_state(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        if not _LIBRARY_STATE:  # what a library allocates at its first use, for good (torch.compile: ~150 MiB)
            _LIBRARY_STATE.append(np.ones(48 * 2**20, dtype=np.uint8))
        return net

    backend = Backend("stateful", "stateful", lambda device, features: None, library_with_state)
    patches = verification_patches(CFG)
    reference = engines.reference_probabilities(MeanBrightness(), patches, CFG)
    try:
        candidate, _ = engines.measure_backend(
            backend, MeanBrightness(), CFG, torch.device("cpu"), reference=reference, patches=patches, repeats=1
        )
    finally:
        _LIBRARY_STATE.clear()
    assert candidate.resident_mib < 16 and 40 < candidate.one_time_mib < 72


def _ranked(path: Path, held: dict[str, float | None]) -> list[Backend]:
    """Exact backends, stored as measured: fastest first in ``held``'s order, each holding ``held[key]`` MiB."""
    builds = [Backend(key, key, lambda device, features: None, lambda net, cfg, device: net) for key in held]
    candidates = tuple(
        engines.Candidate(key, key, 100.0 - rank, 0.0, 0.1, True, resident_mib=mib)
        for rank, (key, mib) in enumerate(held.items())
    )
    engines.store_choice(engines.Choice(machine_signature(CFG, 2, torch.device("cpu")), candidates), path)
    return builds


def test_a_backend_whose_runtimes_exceed_the_memory_budget_is_passed_over_and_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    backends = _ranked(path, {"big": 300.0, "small": 100.0})
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, "500")
    engine = prepare_engine(_model(members=3), backends=backends, path=path, measure=False)
    assert engine.backend == "small"  # 3 × 300 MiB > 500, 3 × 100 ≤ 500
    # the engine's own speed (one network's, as measured) comes before what was passed over
    assert engine.describe() == (
        "small · chosen by measurement on this machine (cached) · 99 patches/s per network (3 networks) · "
        "max |Δp| 0.000 vs fp32 · "
        "passed over because its 3 members' runtimes would exceed the 500 MiB of ICCA_ENGINE_MEMORY_MB: "
        "big (300 MiB a member)"
    )
    # one member fits: the fastest is used
    assert prepare_engine(_model(members=1), backends=backends, path=path, measure=False).backend == "big"
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, "1000")
    assert prepare_engine(_model(members=3), backends=backends, path=path, measure=False).backend == "big"
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, "250")
    alone = prepare_engine(_model(members=1), backends=backends, path=path, measure=False)
    assert "because its member's runtime would exceed the 250 MiB" in alone.describe()


def test_a_librarys_one_time_memory_counts_once_against_the_budget() -> None:
    compiled = engines.Candidate("c", "compiled", 90.0, 0.0, 0.1, True, resident_mib=74.0, one_time_mib=150.0)
    assert not engines.over_memory_budget(compiled, 5, 150 + 5 * 74)
    assert engines.over_memory_budget(compiled, 5, 150 + 5 * 74 - 1)


def test_the_eager_reference_is_budgeted_for_its_copy_of_each_network() -> None:
    """It runs an NCHW copy beside the model's own network: 182 MiB a member measured at 224 px."""
    eager = engines.Candidate(engines.REFERENCE_BACKEND, "torch eager fp32", 9.0, 0.0, 0.1, True, resident_mib=182.0)
    assert engines.over_memory_budget(eager, 5, 900.0) and not engines.over_memory_budget(eager, 4, 900.0)


def test_a_backend_that_runs_the_torch_networks_is_never_passed_over_for_memory() -> None:
    """Its memory is the model's own networks, loaded whatever the engine; only a converted runtime's counts."""
    torch_run = engines.Candidate("torch-cl-bf16", "torch channels-last bf16", 50.0, 0.0, 0.1, True, resident_mib=92.0)
    converted = engines.Candidate("openvino-bf16", "OpenVINO bf16", 90.0, 0.0, 0.1, True, resident_mib=92.0)
    assert not engines.over_memory_budget(torch_run, 5, 100.0)
    assert engines.over_memory_budget(converted, 5, 100.0)
    assert not engines.over_memory_budget(converted, 1, 100.0)


def test_a_ranking_without_memory_figures_is_used_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    backends = _ranked(path, {"unmeasured": None, "small": 1.0})
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, "1")
    engine = prepare_engine(_model(members=3), backends=backends, path=path, measure=False)
    assert engine.backend == "unmeasured" and "passed over" not in engine.describe()


@pytest.mark.parametrize("value", ["lots", "0", "-5", "nan"])
def test_a_memory_budget_that_is_not_a_positive_number_is_refused_in_words(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, value)
    with pytest.raises(ValueError, match="ICCA_ENGINE_MEMORY_MB must be a positive number of MiB"):
        engines.engine_memory_budget_mib()
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, " ")
    assert engines.engine_memory_budget_mib() == engines.DEFAULT_ENGINE_MEMORY_MB


def _convolutions(megabytes: int) -> torch.nn.Module:
    """A small real network with about ``megabytes`` MB of weights, channels-last, in eval."""
    channels = int((megabytes * 2**20 / 4 / 9) ** 0.5)
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1),
        torch.nn.BatchNorm2d(channels),
        torch.nn.Conv2d(channels, channels, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, 2),
    )
    return network.eval().to(memory_format=torch.channels_last)


def test_parked_weights_answer_alike_and_leave_the_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "temporary_files_in_memory", lambda: False)
    network = _convolutions(48)
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before_out = network(x)
    strides = {name: t.stride() for name, t in network.state_dict().items()}
    engines.return_freed_memory()
    before = engines.resident_anonymous_mib()
    engines.park_weights(network)
    engines.return_freed_memory()
    after = engines.resident_anonymous_mib()
    with torch.no_grad():
        assert torch.equal(network(x), before_out)
    assert {name: t.stride() for name, t in network.state_dict().items()} == strides  # channels-last kept
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in network.parameters())
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    if before is not None:
        assert before - after > 40  # the weights left the anonymous memory
        assert any("icca-weights-" in line and "(deleted)" in line for line in maps.splitlines())  # a removed file
    first = network[0].weight
    engines.park_weights(network)  # already parked: left as it is
    assert network[0].weight is first


def test_a_runtime_reading_onnx_parks_each_network_once_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "temporary_files_in_memory", lambda: False)  # parked even where /tmp is a tmpfs
    networks = [_convolutions(1), _convolutions(1)]
    parked_when_built: list[bool] = []

    def from_onnx(path: Path, cfg: PreprocessConfig, device: torch.device):
        parked_when_built.append(all(getattr(n, "_icca_parked", False) for n in networks))
        return MeanBrightness()

    backend = Backend("files", "reads ONNX", lambda device, features: None, lambda *_: MeanBrightness(), from_onnx)
    build_engine(networks, CFG, backend, device=torch.device("cpu"), path=tmp_path / "c.json", tolerance=1.0)
    assert parked_when_built == [True, True]
    # another converted runtime: parked once built; a backend that runs the torch network: left in memory
    converted, torch_run = [_convolutions(1)], [_convolutions(1)]
    build_engine(converted, CFG, _fake_backends([])[1], device=torch.device("cpu"), tolerance=1.0)
    build_engine(torch_run, CFG, engines.BACKENDS_BY_KEY[engines.DEFAULT_BACKEND], device=torch.device("cpu"))
    assert getattr(converted[0], "_icca_parked", False) and not getattr(torch_run[0], "_icca_parked", False)


def test_parked_weights_come_back_into_memory_when_a_torch_engine_runs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    monkeypatch.setattr(engines, "temporary_files_in_memory", lambda: False)
    path = tmp_path / "c.json"
    model = _model(members=2)
    model.members = tuple(_convolutions(1) for _ in range(2))
    model.network = model.members[0]
    for network in model.members:
        engines.park_weights(network)
    refused = Backend(
        "refused",
        "refused",
        lambda device, features: None,
        lambda net, cfg, device: lambda x: net(x) + torch.tensor([0.0, 9.0]),
    )
    default = engines.BACKENDS_BY_KEY[engines.DEFAULT_BACKEND]
    engines.store_choice(
        engines.Choice(
            machine_signature(CFG, 2, torch.device("cpu")),
            (
                engines.Candidate("refused", "refused", 100.0, 0.0, 0.1, True, resident_mib=1.0),
                engines.Candidate(default.key, default.name, 10.0, 0.0, 0.1, True, resident_mib=1.0),
            ),
        ),
        path,
    )
    engine = prepare_engine(model, backends=[refused, default], path=path, measure=False)
    assert engine.backend == engines.DEFAULT_BACKEND
    assert not any(getattr(n, "_icca_parked", True) for n in model.ensemble)
    gc.collect()
    if Path("/proc/self/maps").exists():  # the weights are in memory again: no map of a parked file is left
        assert "icca-weights-" not in Path("/proc/self/maps").read_text()


def test_weights_stay_in_memory_where_they_cannot_be_parked(monkeypatch: pytest.MonkeyPatch) -> None:
    network = _convolutions(1)
    first = network[0].weight

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    engines.park_weights(network)  # no error: the weights simply stay
    assert network[0].weight is first and not getattr(network, "_icca_parked", False)
    monkeypatch.undo()
    monkeypatch.setattr(engines, "temporary_files_in_memory", lambda: True)
    engines.park_weights(network)  # a tmpfs would hold the file in memory all the same
    assert network[0].weight is first


def test_a_temporary_folder_held_in_memory_is_recognised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = Path("/proc/mounts").read_text() if Path("/proc/mounts").exists() else ""
    if " /dev/shm tmpfs " not in mounts:
        pytest.skip("no tmpfs at /dev/shm here")
    monkeypatch.setattr(engines.tempfile, "tempdir", "/dev/shm")
    assert engines.temporary_files_in_memory()
    disk = next((line.split()[1] for line in mounts.splitlines() if line.split()[2] in ("ext4", "xfs", "btrfs")), None)
    if disk is not None:
        monkeypatch.setattr(engines.tempfile, "tempdir", disk)
        assert not engines.temporary_files_in_memory()


def test_a_ranking_made_before_memory_was_measured_is_measured_again_or_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    backends = _ranked(path, {"unmeasured": None, "small": None})
    engine = prepare_engine(_model(), backends=backends, path=path, measure=False)
    assert engine.backend == "unmeasured" and "memory per member not measured yet" in engine.describe()
    if engines.resident_anonymous_mib() is None:
        return  # nothing to measure memory with: the ranking stays as it is
    again = prepare_engine(_model(), backends=backends, path=path, measure=True, isolate=False)  # measured, once
    choice = cached_choice(machine_signature(CFG, 2, torch.device("cpu")), path)
    assert choice is not None and engines.memory_measured(choice) and "not measured" not in again.describe()


def test_background_preparation_that_fails_says_why_beside_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(engines.ENGINE_MEMORY_ENV, "900MB")
    model = _model()
    thread = prepare_engine_in_background(model, path=tmp_path / "c.json", backends=_fake_backends([]))
    thread.join(timeout=120)
    assert model.engine.backend == engines.DEFAULT_BACKEND
    assert model.engine.how.startswith("default: the measured choice could not be prepared (ICCA_ENGINE_MEMORY_MB")


def test_background_preparation_that_fails_in_a_runtime_leaves_its_message_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("libruntime.so: std::bad_variant_access in plugin 7")

    monkeypatch.setattr(engines, "prepare_engine", crash)
    model = _model()
    prepare_engine_in_background(model, path=tmp_path / "c.json").join(timeout=60)
    assert model.engine.how == "default: the measured choice could not be prepared (the reason is in the log)"
    assert "bad_variant_access" in caplog.text


def _backend_failing_at(member: int, how: str, built: list[weakref.ref]) -> Backend:
    """Exact for the members before ``member``; that one is off by 0.3 (``how="off"``) or cannot be built.

    ``built`` gets a weak reference to every predictor, so a test can count those still alive.
    """
    calls: list[int] = []

    def build(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        calls.append(len(calls) + 1)
        if len(calls) == member and how == "raises":
            raise MemoryError("out of memory while converting")
        shift = torch.tensor([0.0, 0.3 if len(calls) == member else 0.0])

        def predict(x: torch.Tensor) -> torch.Tensor:
            return net(x) + shift

        built.append(weakref.ref(predict))
        return predict

    return Backend("third", "fails at a member", lambda device, features: None, build)


@pytest.mark.parametrize(
    ("how", "error", "alive"),
    [("off", EngineVerificationError, [0, 1, 2, 3, 0]), ("raises", MemoryError, [0, 1, 2, 0])],
)
def test_runtimes_built_before_a_failing_member_are_released_before_the_error_leaves(
    how: str, error: type[BaseException], alive: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[weakref.ref] = []
    alive_at_each_trim: list[int] = []
    monkeypatch.setattr(
        engines, "return_freed_memory", lambda: alive_at_each_trim.append(sum(r() is not None for r in built))
    )
    backend = _backend_failing_at(3, how, built)
    with pytest.raises(error):
        build_engine([MeanBrightness()] * 3, CFG, backend, device=torch.device("cpu"), path=tmp_path / "c.json")
    # the members built were kept after their trims (member 3's check comes after all are built);
    # at the failure nothing built is alive any more
    assert alive_at_each_trim == alive


def test_the_first_member_is_checked_at_once_and_the_others_once_all_are_built(tmp_path: Path) -> None:
    events: list[str] = []

    def build(net: torch.nn.Module, cfg: PreprocessConfig, device: torch.device):
        member = sum(e.startswith("build") for e in events) + 1
        events.append(f"build {member}")

        def predict(x: torch.Tensor) -> torch.Tensor:
            if events[-1] != f"check {member}":
                events.append(f"check {member}")
            return net(x)

        return predict

    backend = Backend("logged", "logged", lambda device, features: None, build)
    build_engine([MeanBrightness()] * 3, CFG, backend, device=torch.device("cpu"), path=tmp_path / "c.json")
    assert events == ["build 1", "check 1", "build 2", "build 3", "check 2", "check 3"]
    builds: list[str] = []
    with pytest.raises(EngineVerificationError, match="member 1"):  # refused on the first: no more conversions
        build_engine([MeanBrightness()] * 3, CFG, _fake_backends(builds)[0], device=torch.device("cpu"))
    assert builds == ["off"]


@pytest.mark.parametrize(("key", "compressed"), [("openvino-bf16", 1), ("openvino-mixed", 1), ("openvino-fp32", 0)])
def test_openvino_keeps_fp16_weights_only_where_it_computes_in_bf16(
    key: str, compressed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.resnet import build_resnet50

    backend = engines.BACKENDS_BY_KEY[key]
    if backend.unusable(torch.device("cpu"), detect_cpu_features()) is not None:
        pytest.skip("needs OpenVINO and, for bf16, a CPU with native bf16")
    precisions: list[set[str]] = []
    real = engines._with_fp16_weights

    def spy(model):
        compressed_model = real(model)
        precisions.append({c.get_output_element_type(0).get_type_name() for c in _weights(compressed_model)})
        return compressed_model

    monkeypatch.setattr(engines, "_with_fp16_weights", spy)
    backend.build(build_resnet50(seed=0).eval(), CFG, torch.device("cpu"))
    assert len(precisions) == compressed and all(p == {"f16"} for p in precisions)


def test_a_runtime_reading_onnx_gets_every_members_export_before_any_is_built(tmp_path: Path) -> None:
    folders: list[Path] = []
    files_seen: list[list[str]] = []

    def from_onnx(path: Path, cfg: PreprocessConfig, device: torch.device):
        folders.append(path.parent)
        files_seen.append(sorted(p.name for p in path.parent.iterdir()))
        return MeanBrightness()

    def from_network(*_: object):
        raise AssertionError("a runtime that reads ONNX is built from the export")

    backend = Backend("files", "reads ONNX", lambda device, features: None, from_network, from_onnx)
    engine = build_engine([MeanBrightness()] * 3, CFG, backend, device=torch.device("cpu"), path=tmp_path / "c.json")
    assert len(engine.predictors) == 3
    assert files_seen == [["member1.onnx", "member2.onnx", "member3.onnx"]] * 3
    assert len(set(folders)) == 1 and not folders[0].exists()  # removed once the runtimes are built


def test_onnx_runtime_int8_builds_from_an_onnx_file() -> None:
    """The int8 path on any CPU ONNX Runtime runs on (it is only chosen on VNNI CPUs without bf16)."""
    pytest.importorskip("onnxruntime")
    from models.resnet import build_resnet50

    with engines.onnx_files([build_resnet50(seed=0).eval()], CFG.input_px) as (path,):
        predictor = engines._ort_int8_from_onnx(path, CFG, torch.device("cpu"))
    probs = predict_patches(predictor, verification_patches(CFG)[:4], CFG, precision="fp32")
    assert probs.shape == (4,) and np.all((probs >= 0) & (probs <= 1))


def test_fp16_weights_replace_every_float_weight_and_the_model_still_answers_alike() -> None:
    """The graph change alone, on any CPU OpenVINO runs on (the bf16 backends need native bf16)."""
    pytest.importorskip("openvino")
    import openvino as ov

    from models.resnet import build_resnet50

    network = build_resnet50(seed=0).eval()
    with engines.onnx_files([network], 32) as (path,):
        model = engines._openvino_model(path)
    assert {c.get_output_element_type(0).get_type_name() for c in _weights(model)} == {"f32"}
    compressed = engines._with_fp16_weights(model)
    assert {c.get_output_element_type(0).get_type_name() for c in _weights(compressed)} == {"f16"}
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    got = ov.Core().compile_model(compressed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
    with torch.no_grad():
        want = torch.softmax(network(torch.from_numpy(x)), 1).numpy()
    assert np.max(np.abs(np.exp(got[:, 1]) / np.exp(got).sum(1) - want[:, 1])) < 0.02


def test_without_openvinos_transformation_the_model_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino._offline_transformations", None)  # import fails
    marker = object()
    assert engines._with_fp16_weights(marker) is marker


def test_a_model_is_checked_again_after_the_conversions_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    exact = _fake_backends(builds)[1]
    signature = machine_signature(CFG, 2, torch.device("cpu"))
    path = tmp_path / "c.json"
    build_engine(
        [MeanBrightness()], CFG, exact, model_id="m", signature=signature, path=path, device=torch.device("cpu")
    )
    assert len(json.loads(path.read_text())["verified"]) == 1
    monkeypatch.setattr(engines, "CHECK_REVISION", engines.CHECK_REVISION + 1)
    build_engine(
        [MeanBrightness()], CFG, exact, model_id="m", signature=signature, path=path, device=torch.device("cpu")
    )
    assert len(json.loads(path.read_text())["verified"]) == 2  # checked afresh, under the new revision


def _weights(model) -> list:
    """The model's weight constants: those of over 1,000 values."""
    return [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_output_size() == 1
            and np.prod(list(op.get_output_shape(0))) > 1000]  # fmt: skip


def test_the_fp32_reference_runs_where_the_networks_weights_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the default engine moves the networks there: their reference inputs must follow (no CUDA here)."""
    devices: list[str] = []
    monkeypatch.setattr(engines, "predict_patches", lambda *args, device="cpu", **kwargs: devices.append(str(device)))
    network = _convolutions(1)
    engines.reference_probabilities(network, verification_patches(CFG), CFG)
    on_gpu = _convolutions(1)
    monkeypatch.setattr(on_gpu, "parameters", lambda: iter([torch.empty(0, device="meta")]))
    engines.reference_probabilities(on_gpu, verification_patches(CFG), CFG)
    engines.reference_probabilities(MeanBrightness(), verification_patches(CFG), CFG)  # no weights: the CPU
    assert devices == ["cpu", "meta", "cpu"]


def test_asking_for_a_cpp_compiler_imports_no_compiler_stack() -> None:
    """Inductor's import (dynamo, Triton: about 150 MiB) is left to a process that compiles."""
    import subprocess

    code = (
        "import sys, torch; from core import engine; from core.cpu import detect_cpu_features; "
        "engine.BACKENDS_BY_KEY['torch-compile-fp32'].unusable(torch.device('cpu'), detect_cpu_features()); "
        "print(sorted(m for m in ('torch._inductor', 'torch._dynamo', 'triton') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "[]"


def test_a_library_s_one_time_memory_counts_for_each_of_its_backends(tmp_path: Path) -> None:
    # measured in one process, only the library's first backend saw its one-time memory
    measured = (
        engines.Candidate(
            "openvino-bf16", "OpenVINO bf16", 50.0, 0.0, 1.0, True, resident_mib=100.0, one_time_mib=20.0
        ),
        engines.Candidate("openvino-fp32", "OpenVINO fp32", 20.0, 0.0, 1.0, True, resident_mib=100.0, one_time_mib=0.0),
        engines.Candidate("torch-compile-bf16", "c16", 45.0, 0.0, 9.0, True, resident_mib=90.0, one_time_mib=150.0),
        engines.Candidate("torch-compile-fp32", "c32", 25.0, 0.0, 9.0, True, resident_mib=90.0, one_time_mib=1.0),
        engines.Candidate("torch-cl-fp32", "cl", 10.0, 0.0, 0.1, True, resident_mib=95.0, one_time_mib=0.0),
        engines.Candidate("onnxruntime-fp32", "ort", 15.0, 0.0, 1.0, True),  # not measured: stays so
    )
    shared = {c.key: c.one_time_mib for c in engines.share_one_time_memory(measured)}
    assert shared == {
        "openvino-bf16": 20.0,
        "openvino-fp32": 20.0,
        "torch-compile-bf16": 150.0,
        "torch-compile-fp32": 150.0,
        "torch-cl-fp32": 0.0,
        "onnxruntime-fp32": None,
    }
    # a ranking stored before the sharing gets it when read back, so the budget sees it
    path = tmp_path / "c.json"
    engines.store_choice(engines.Choice(machine_signature(CFG, 2, torch.device("cpu")), measured), path)
    stored = engines.cached_choice(machine_signature(CFG, 2, torch.device("cpu")), path)
    assert stored is not None
    fp32 = next(c for c in stored.candidates if c.key == "openvino-fp32")
    assert engines.over_memory_budget(fp32, 1, 110.0)  # 20 once + 100 a member > 110


def test_a_ranking_shares_each_library_s_one_time_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """choose_backend gives the library's one-time memory, seen by its first backend measured, to the others.

    And the ONNX exporter's, measured before any backend, to every backend that goes through it.
    """
    seen = {"openvino-bf16": 20.0, "openvino-fp32": 0.0, "torch-cl-fp32": 0.0}
    monkeypatch.setattr(engines, "exporter_one_time_mib", lambda cfg: 14.0)

    def measured(backend: Backend, *args: object, **kwargs: object) -> tuple[engines.Candidate, None]:
        once = seen[backend.key]
        return engines.Candidate(backend.key, backend.name, 10.0, 0.0, 0.1, True, None, 100.0, once), None

    monkeypatch.setattr(engines, "measure_backend", measured)
    backends = [Backend(key, key, lambda device, features: None, lambda net, cfg, device: net) for key in seen]
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    choice = choose_backend(tiny, CFG, backends=backends)
    assert [c.one_time_mib for c in choice.candidates] == [34.0, 34.0, 0.0]
    path = tmp_path / "c.json"  # read back, shared again: unchanged
    engines.store_choice(choice, path)
    stored = engines.cached_choice(choice.signature, path)
    assert stored is not None and [c.one_time_mib for c in stored.candidates] == [34.0, 34.0, 0.0]


def test_the_onnx_exporter_s_one_time_memory_is_measured_or_said_unknown() -> None:
    measured = engines.exporter_one_time_mib(CFG)
    assert measured is None or measured >= 0.0
