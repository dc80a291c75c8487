"""``python -m core bench [--quick] [--json]``: speed of the patch model on this machine, as ratios measured in one run.

Never used as a timed assertion in tests. One standard case, fixed by seed: a 512 × 512
phantom slice at 0.7 mm/px with a 55 mm tumour, default preprocessing (16 mm patches every
4 mm at 0.125 mm/px, 224-px network input). On the same patches, in one run:

* ``baseline_patches_per_s``: fp32 eager, NCHW, batch 32 (the reference every engine is
  checked against), against ``patches_per_s`` of the engine :mod:`core.engine` chooses for
  this machine; the two are timed batch by batch in turn, so other processes on the machine
  slow both alike. ``max_abs_prob_diff``: the largest |Δp| between them (and of the engine's
  own check over every ensemble member).
* ``e2e_over_inference``: Analyze end to end (slice → lattice → patches → engine → risk →
  probability map, cache off) over the engine's forward passes alone on the same patches.
* ``reopen_s``: a saved case reopened from a SQLite database and its overlay drawn (no model).
* ``uncertainty_over_single``: the ensemble (K members) plus the outline sensitivity, after one
  member's analysis filled the patch cache, over that single analysis; at most K + 1.
* ``peak_rss_mb``: the peak resident memory of a fresh process doing what the dashboard does
  (load the model, prepare its engine, analyse), the last case a 1,586-patch outline.

The network is a seeded, untrained ResNet50 ensemble (``--members``) unless ``--model`` names a
checkpoint. Untrained weights make every engine look exact (their probabilities sit near 0.5);
``--model`` with trained weights shows each engine's real |Δp|.

``--train`` adds the training section: patches/s of one optimisation step at the paper's
configuration, fp32 against mixed precision, and the projected wall time of a paper-scale run.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.cpu import detect_cpu_features, process_status_mib
from core.inference import INFERENCE_BATCH, bf16_supported, to_network_input
from core.preprocess import PreprocessConfig
from models.resnet import build_resnet50

PAPER_PATCHES = 71_081
PAPER_EPOCHS = 50
STANDARD_SEED = 3614  # make_patient draws 0.70003 mm/px from this seed
STANDARD_TUMOUR_MM = 55.0
# The memory target's case: a round 180 mm outline on the standard slice, 1,586 patches. A phantom
# tumour cannot be drawn that large: it is confined to the liver, which the abdominal wall bounds.
LARGE_TUMOUR_MM = 180.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[], None], batch: int, repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Patches per second of ``step`` (one batch), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return batch * repeats / (time.perf_counter() - started)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's ``VmHWM`` where there is one: ``ru_maxrss`` survives ``exec``, so a child started
    from a large parent would report the parent's peak.
    """
    peak = process_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- the standard case


def standard_case(tumour_mm: float = STANDARD_TUMOUR_MM, seed: int = STANDARD_SEED) -> tuple[Any, np.ndarray]:
    """(CtSlice, (512, 512) bool outline): the phantom slice as the page reads it (DICOM bytes → slice)."""
    from core.imaging import load_slice
    from core.phantom import dicom_bytes, make_patient

    patient = make_patient("BENCH-001", 1, "N1", np.random.default_rng(seed), size_mm=tumour_mm)
    return load_slice(dicom_bytes(patient, seed)), patient.mask


def large_case(ct: Any | None = None) -> tuple[Any, np.ndarray]:
    """(CtSlice, (512, 512) bool outline): the standard slice (``ct`` when already loaded) with a round
    ``LARGE_TUMOUR_MM`` outline at its centre."""
    from core.figures import disk_mask

    ct = ct if ct is not None else standard_case()[0]
    return ct, disk_mask(LARGE_TUMOUR_MM, ct.spacing_mm[0])


def random_ensemble(members: int, cfg: PreprocessConfig | None = None) -> Any:
    """A LoadedModel of ``members`` seeded, untrained ResNet50s with default preprocessing.

    Its cache id is fixed, so the engine's check of each member is remembered between runs.
    """
    from models.checkpoint import LoadedModel

    # channels-last, as models.checkpoint.load_checkpoint gives them: the probe takes the dashboard's path
    networks = tuple(build_resnet50(seed=k).eval().to(memory_format=torch.channels_last) for k in range(members))
    return LoadedModel(
        networks[0],
        cfg or PreprocessConfig(),
        {"name": "untrained benchmark ensemble", "training_data": "untrained"},
        "",
        Path("bench"),
        members=networks if members > 1 else (),
        member_names=tuple(f"seed {k}" for k in range(members)),
        cache_id=f"bench-resnet50-untrained-{members}",
    )


def single_member(model: Any, engine: Any) -> tuple[Any, Any]:
    """(model, engine) restricted to the first member: the unit "single analysis" is measured in."""
    from dataclasses import replace

    # replace() keeps cache_id: its patches are the ensemble's first member's
    one = replace(model, members=(), member_names=model.names[:1], engine=None)
    return one, replace(engine, predictors=engine.predictors[:1])


# ---------------------------------------------------------------- sections


def interleaved_rates(
    first: Callable[[torch.Tensor], torch.Tensor],
    second: Callable[[torch.Tensor], torch.Tensor],
    batches: Sequence[torch.Tensor],
    positive_index: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """Patches/s of two predictors timed batch by batch in turn, and their max |Δp|.

    Each predictor is warmed on the first batch; then each round times every batch with
    ``first`` and at once with ``second``.
    """
    times = [0.0, 0.0]
    probs: list[list[np.ndarray]] = [[], []]
    with torch.inference_mode():
        for predictor in (first, second):
            predictor(batches[0])
        for round_index in range(rounds):
            for x in batches:
                for side, predictor in enumerate((first, second)):
                    started = time.perf_counter()
                    logits = predictor(x)
                    times[side] += time.perf_counter() - started
                    if round_index == 0:
                        probs[side].append(torch.softmax(logits.float(), 1)[:, positive_index].numpy())
    n = rounds * sum(len(x) for x in batches)
    diff = float(np.max(np.abs(np.concatenate(probs[0]) - np.concatenate(probs[1]))))
    return {"first_patches_per_s": n / times[0], "second_patches_per_s": n / times[1], "max_abs_prob_diff": diff}


def reopen_seconds(ct: Any, mask: np.ndarray, result: Any, model: Any) -> float:
    """Seconds to reopen a saved case (database → pixels, outline, probability map) and draw its overlay."""
    from sqlalchemy.orm import Session

    from core import db
    from core.analysis import ClinicalInputs, analysis_record, case_record, clinical_risk_for, clinical_update
    from core.cases import load_saved_case, save_case
    from core.heatmap import jet_overlay
    from core.imaging import display_image

    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        db.migrate(engine)
        inputs = ClinicalInputs("N1")
        with Session(engine) as session:
            outcome = save_case(
                session,
                case_record(ct, mask, "BENCH-001", inputs, (60.0, 160.0)),
                analysis_record(result, model, clinical_risk_for("N1")),
                clinical_update(inputs),
                None,
            )
            session.commit()
        started = time.perf_counter()
        with Session(engine) as session:
            saved = load_saved_case(session, outcome.case_id)
            assert saved is not None
            jet_overlay(display_image(ct, saved.display_level, saved.display_width), saved.pmap, saved.mask)
        seconds = time.perf_counter() - started
        engine.dispose()
    return seconds


def inference_benchmark(
    quick: bool = False,
    members: int | None = None,
    model_path: Path | None = None,
    log: Callable[[str], None] | None = None,
    *,
    cfg: PreprocessConfig | None = None,
    backend_keys: Sequence[str] | None = None,
    measure_rss: bool = True,
) -> dict[str, Any]:
    """The inference section: baseline vs engine, end to end, reopen, uncertainty, memory (see module doc).

    ``cfg``, ``backend_keys`` (measured in this process, not stored) and ``measure_rss`` exist
    for tests, which run the whole section on a small input in seconds.
    """
    from core import engine as engines
    from core.analysis import analyze_case
    from core.patch_cache import PatchCache
    from core.scoring import slice_context
    from core.uncertainty import outline_sensitivity
    from models.checkpoint import load_checkpoint

    device = engines.default_device()
    members = members or (2 if quick else 5)
    model = load_checkpoint(model_path) if model_path else random_ensemble(members, cfg)
    cfg = model.preprocess
    features = detect_cpu_features()
    out: dict[str, Any] = {
        "cpu_features": features.to_dict(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "weights": str(model_path) if model_path else f"untrained ResNet50 × {members} (seeds 0–{members - 1})",
        "members": len(model.ensemble),
        "input_px": cfg.input_px,
    }

    # the engine: this machine's cached ranking, or measured now (quick: without the slow-to-build backends)
    backends = [b for b in engines.BACKENDS if not (quick and b.key in engines.SLOW_TO_BUILD)]
    signature = engines.machine_signature(cfg, len(cfg.labels), device, features)
    cached = engines.cached_choice(signature) is not None
    started = time.perf_counter()
    if backend_keys is not None:
        chosen = [engines.BACKENDS_BY_KEY[k] for k in backend_keys]
        with tempfile.TemporaryDirectory() as tmp:
            engine = engines.prepare_engine(
                model, backends=chosen, path=Path(tmp) / "choice.json", isolate=False, log=log
            )
    elif cached or not quick:
        engine = engines.prepare_engine(model, log=log)
    else:  # measured for this run only: a quick ranking lacks backends, so it is not stored
        with tempfile.TemporaryDirectory() as tmp:
            engine = engines.prepare_engine(model, backends=backends, path=Path(tmp) / "choice.json", log=log)
    out["engine"] = engine.name
    out["engine_backend"] = engine.backend
    out["engine_how"] = engine.how
    out["engine_notes"] = list(engine.notes)  # faster backends passed over for memory, figures not yet measured
    out["engine_prepare_s"] = time.perf_counter() - started
    choice = engines.cached_choice(signature)
    if choice is not None:
        out["candidates_patches_per_s"] = {c.name: c.patches_per_s for c in choice.ranking()}
        out["candidates_resident_mib"] = {c.name: c.resident_mib for c in choice.ranking()}  # per member

    # one case, cut once: the patches both sides score
    ct, mask = standard_case()
    context = slice_context(ct, cfg)
    from core.lattice import cut_cells, plan_lattice

    grid = plan_lattice(mask, ct.spacing_mm, cfg)
    patches = cut_cells(context.grey, ct.spacing_mm, cfg, grid.cells)
    out["case"] = {
        "tumour_mm": STANDARD_TUMOUR_MM,
        "spacing_mm": ct.spacing_mm[0],
        "patches": len(grid),
        "seed": STANDARD_SEED,
    }
    n_timed = min(len(patches), 64 if quick else 96)
    batches = [to_network_input(patches[i : i + INFERENCE_BATCH], cfg) for i in range(0, n_timed, INFERENCE_BATCH)]
    baseline = engines.BACKENDS_BY_KEY[engines.REFERENCE_BACKEND].build(model.network, cfg, device)
    engines.release_networks(model)  # as the dashboard does: a converted engine holds its own weights
    rates = interleaved_rates(baseline, engine.predictors[0], batches, cfg.positive_index)
    out["baseline"] = "torch eager fp32 NCHW, batch 32"
    out["baseline_patches_per_s"] = rates["first_patches_per_s"]
    out["patches_per_s"] = rates["second_patches_per_s"]
    out["speedup_vs_fp32_eager"] = rates["second_patches_per_s"] / rates["first_patches_per_s"]
    out["max_abs_prob_diff"] = max(rates["max_abs_prob_diff"], engine.max_abs_diff or 0.0)
    del baseline

    # end to end, one member, cache off, against its forward passes alone on the same patches;
    # each timed in turn a few times, the fastest kept (other processes only ever slow a run down)
    single, single_engine = single_member(model, engine)
    pure, e2e = float("inf"), float("inf")
    for _ in range(1 if quick else 3):
        all_batches = [
            to_network_input(patches[i : i + INFERENCE_BATCH], cfg) for i in range(0, len(patches), INFERENCE_BATCH)
        ]
        with torch.inference_mode():
            started = time.perf_counter()
            for x in all_batches:
                single_engine.predictors[0](x)
            pure = min(pure, time.perf_counter() - started)
        del all_batches
        started = time.perf_counter()
        result = analyze_case(ct, mask, single, engine=single_engine, cache=None)
        e2e = min(e2e, time.perf_counter() - started)
    out["inference_s"], out["analyze_s"] = pure, e2e
    out["e2e_over_inference"] = e2e / pure

    try:
        out["reopen_s"] = reopen_seconds(ct, mask, result, single)
    except Exception as error:  # the database layer is someone else's moving part: say so, keep going
        out["reopen_s"] = None
        out["reopen_error"] = f"{type(error).__name__}: {error}"[:200]

    # uncertainty after the cache: one member's analysis, then the ensemble and the sensitivity
    cache = PatchCache()
    started = time.perf_counter()
    analyze_case(ct, mask, single, engine=single_engine, cache=cache)
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    ensemble = analyze_case(ct, mask, model, engine=engine, cache=cache)
    sensitivity = outline_sensitivity(ct, mask, model, engine=engine, cache=cache)
    uncertainty_s = time.perf_counter() - started
    out["single_analysis_s"], out["uncertainty_s"] = single_s, uncertainty_s
    out["uncertainty_over_single"] = uncertainty_s / single_s
    out["uncertainty_bound"] = len(model.ensemble) + 1
    out["ensemble"] = {
        "risk": ensemble.dl_risk.probability,
        "low": ensemble.spread.low if ensemble.spread else None,
        "high": ensemble.spread.high if ensemble.spread else None,
    }
    out["sensitivity"] = {f"{r.offset_mm:+g} mm": [r.risk, r.n_patches] for r in sensitivity.rows}
    out["sensitivity_new_evaluations"] = sensitivity.computed

    out["bench_process_peak_rss_mb"] = peak_rss_mb()
    if measure_rss and not quick:
        out.update(rss_probe_in_child(len(model.ensemble) if model_path is None else None, model_path))
    else:  # --quick: no large case; the peak is this process's own (baseline network included)
        out["peak_rss_mb"] = out["bench_process_peak_rss_mb"]
        out["peak_rss_note"] = "this benchmark process (--quick measures no 1,586-patch case)"
    return out


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ≥ 4.0: ``clear_refs`` 5); whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_probe(members: int | None, model_path: Path | None) -> dict[str, Any]:
    """The dashboard's path in a fresh process: load, prepare the engine, analyse a large case; its peak RSS.

    Loads the model (every member), prepares its engine from this machine's cached choice and
    releases the torch weights, as the dashboard does (``load_peak_rss_mb``: the peak so far,
    conversions included). Then, with the peak reset to the resident memory of the loaded
    model, analyses the standard case with the whole ensemble (every member's runtime buffers
    exist from then on) and the large case (1,586 patches) with the first member, cache off:
    ``peak_rss_mb`` is what a server holding the model needs to analyse such a case.
    """
    from core import engine as engines
    from core.analysis import analyze_case
    from models.checkpoint import load_checkpoint

    model = load_checkpoint(model_path) if model_path else random_ensemble(members or 5)
    engine = engines.prepare_engine(model)
    engines.release_networks(model)
    load_peak = peak_rss_mb()
    reset = reset_peak_rss()  # from here on, the peak is the analyses' own
    ct, mask = standard_case()
    analyze_case(ct, mask, model, engine=engine, cache=None)
    single, single_engine = single_member(model, engine)
    large_ct, large_mask = large_case(ct)  # the slice already loaded: nothing rebuilt while measured
    started = time.perf_counter()
    large = analyze_case(large_ct, large_mask, single, engine=single_engine, cache=None)
    return {
        "peak_rss_mb": peak_rss_mb() if reset else None,
        "load_peak_rss_mb": load_peak,
        "large_case": {
            "tumour_mm": LARGE_TUMOUR_MM,
            "patches": large.dl_risk.n_patches,
            "analyze_s": time.perf_counter() - started,
            "members_loaded": len(model.ensemble),
        },
    }


def rss_probe_in_child(members: int | None, model_path: Path | None) -> dict[str, Any]:
    """:func:`rss_probe` in a child process (a peak RSS is a process's own high-water mark)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "core.bench", "--rss-probe"]
    if model_path is not None:
        command += ["--model", str(model_path)]
    if members is not None:
        command += ["--members", str(members)]
    done = subprocess.run(
        command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=1800, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"peak_rss_mb": None, "rss_probe_error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def training_rates(batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Optimisation-step patches/s (Adam, cross-entropy): fp32 baseline vs bf16 autocast."""
    rates = {}
    for name, dtype in (("fp32_baseline", None), ("channels_last_bf16", torch.bfloat16)):
        if dtype is not None and device.type == "cpu" and not bf16_supported():
            continue
        net = build_resnet50(seed=0).train().to(device)
        if dtype is not None:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=2.5e-4)
        x = torch.randn(batch, 3, 224, 224, device=device)
        if dtype is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,), device=device)

        rates[name] = _rate(_train_step(net, opt, x, y, dtype), batch, repeats, device)
    return rates


def _train_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None
) -> Callable[[], None]:
    """One Adam step on a fixed batch, under autocast when ``dtype`` is given."""

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def paper_scale_hours(patches_per_s: float) -> float:
    """Hours for 5-fold CV (each fold trains on 4/5) plus a final model, 50 epochs each."""
    patch_steps = PAPER_PATCHES * PAPER_EPOCHS * (5 * 0.8 + 1)
    return patch_steps / patches_per_s / 3600


def run_benchmarks(
    quick: bool = False,
    out: Path | None = None,
    train: bool = False,
    *,
    as_json: bool = False,
    members: int | None = None,
    model_path: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """Run the sections; return a readable report, or with ``as_json`` one JSON object on the last line.

    The results are also written as JSON to ``out`` when given.
    """
    results = inference_benchmark(quick=quick, members=members, model_path=model_path, log=log)
    if train:
        from core.engine import default_device

        device = default_device()
        repeats = 2 if quick else 5
        batch = 128 if device.type == "cuda" else 16
        rates = training_rates(batch, repeats * (5 if device.type == "cuda" else 1), device)
        results["training_patches_per_s"] = rates
        results["paper_scale_hours"] = {k: paper_scale_hours(v) for k, v in rates.items()}
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    text = _render(results)
    return f"{text}\n{json.dumps(results)}" if as_json else text


def _render(results: dict[str, Any]) -> str:
    cpu = results["cpu_features"]
    lines = [
        f"CPU: {cpu['model']} — {cpu['isa_class']} ({', '.join(cpu['flags']) or 'no AVX2'}"
        f"{'; capped at ' + cpu['isa_cap'] if cpu['isa_cap'] else ''}), {results['threads']} threads, "
        f"torch {results['torch']}",
        f"weights: {results['weights']}; input {results['input_px']} px",
        f"engine: {results['engine']} ({results['engine_how']}; prepared in {results['engine_prepare_s']:.1f} s)",
        *(f"  {note}" for note in results.get("engine_notes", [])),
    ]
    held = results.get("candidates_resident_mib") or {}
    for name, rate in (results.get("candidates_patches_per_s") or {}).items():
        memory = f"  holds {held[name]:.0f} MiB per member" if held.get(name) is not None else ""
        lines.append(f"  candidate {name:34s} {rate:8.1f} patches/s{memory}")
    case = results["case"]
    lines += [
        f"standard case: {case['tumour_mm']:g} mm tumour, {case['spacing_mm']:.2f} mm/px, {case['patches']} patches",
        f"  {results['baseline']:34s} {results['baseline_patches_per_s']:8.1f} patches/s",
        f"  {results['engine']:34s} {results['patches_per_s']:8.1f} patches/s  "
        f"×{results['speedup_vs_fp32_eager']:.2f}  max |Δp| {results['max_abs_prob_diff']:.4f}",
        f"  Analyze end to end {results['analyze_s']:.2f} s = ×{results['e2e_over_inference']:.2f} the inference alone",
        f"  reopen a saved case: {results['reopen_s']:.3f} s"
        if results.get("reopen_s") is not None
        else f"  reopen: not measured ({results.get('reopen_error')})",
        f"  ensemble of {results['members']} + outline sensitivity after the cache: "
        f"×{results['uncertainty_over_single']:.2f} a single analysis (bound ×{results['uncertainty_bound']})",
    ]
    if "large_case" in results:
        large = results["large_case"]
        lines.append(
            f"  {large['tumour_mm']:g} mm round outline: {large['patches']} patches in {large['analyze_s']:.1f} s (one member)"
        )
    if results.get("peak_rss_note"):
        lines.append(f"  peak RSS of {results['peak_rss_note']}: {results['peak_rss_mb']:.0f} MiB")
    elif results.get("peak_rss_mb") is not None:
        lines.append(
            f"  peak RSS analysing it, model and engine loaded: {results['peak_rss_mb']:.0f} MiB "
            f"(loading the model and building its engine: {results['load_peak_rss_mb']:.0f} MiB)"
        )
    else:
        lines.append(f"  peak RSS: not measured ({results.get('rss_probe_error')})")
    if not results.get("peak_rss_note"):
        lines.append(f"  peak RSS of this benchmark process: {results['bench_process_peak_rss_mb']:.0f} MiB")
    if results.get("training_patches_per_s"):
        rates = results["training_patches_per_s"]
        base = rates["fp32_baseline"]
        lines.append("training patches/s:")
        lines += [f"  {n:20s} {v:9.1f} patches/s  ×{v / base:.2f} vs fp32 baseline" for n, v in rates.items()]
        lines.append("paper-scale run (71,081 patches × 50 epochs, 5-fold CV + final model):")
        lines += [f"  {k:20s} {v:7.2f} h" for k, v in results["paper_scale_hours"].items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` options (for ``core.cli``'s sub-command and ``python -m core.bench``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 members, 64 timed patches, no large case (under a minute once this machine is measured)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--train", action="store_true", help="also measure training steps (paper configuration)")
    parser.add_argument("--members", type=int, default=None, help="ensemble size of the untrained model (5; quick 2)")
    parser.add_argument("--model", default=None, help="a checkpoint instead of the untrained ensemble")
    parser.add_argument("--rss-probe", action="store_true", help=argparse.SUPPRESS)


def cmd_bench(args: argparse.Namespace) -> int:
    import sys

    if getattr(args, "rss_probe", False):
        model = Path(args.model) if args.model else None
        print(json.dumps(rss_probe(args.members, model)))
        return 0
    print(
        run_benchmarks(
            quick=args.quick,
            out=Path(args.out) if args.out else None,
            train=args.train,
            as_json=getattr(args, "json", False),
            members=getattr(args, "members", None),
            model_path=Path(args.model) if getattr(args, "model", None) else None,
            log=lambda line: print(line, file=sys.stderr),
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    from core.access import acting_as, command_line_actor

    with acting_as(command_line_actor()):  # run as `python -m core.bench` (the RSS probe's child), not via core.cli
        return cmd_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
