"""Score lattice cells of one slice with every member of a model, through the patch cache.

The one place where patches meet the network: :func:`core.analysis.analyze_case` and
:func:`core.uncertainty.outline_sensitivity` both ask for the probabilities of a set of
lattice cells (:mod:`core.lattice`); only the (cell, member) pairs the cache does not hold
are cut and run, in batches of :data:`~core.inference.INFERENCE_BATCH`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.engine import DEFAULT_BACKENDS, Engine, EngineFault, engine_of, fall_back_to_default, guarded
from core.imaging import CtSlice, model_grey
from core.inference import INFERENCE_BATCH, ProgressFn, predict_patches
from core.lattice import cut_cells
from core.patch_cache import PatchCache, preprocess_digest, slice_digest
from core.preprocess import PreprocessConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceContext:
    """A slice as the model sees it, and the digests that name its patches in the cache.

    Attributes:
        grey: (rows, cols) float32 in [0, 1], in the model's window.
        spacing_mm: (row, col) mm, or ``None``.
        cfg: the model's preprocessing.
        slice_key: sha256 of the slice's pixels and spacing; ``cfg_key``: of the preprocessing.
    """

    grey: np.ndarray
    spacing_mm: tuple[float, float] | None
    cfg: PreprocessConfig
    slice_key: str
    cfg_key: str


def slice_context(ct: CtSlice, cfg: PreprocessConfig) -> SliceContext:
    """The model's view of ``ct`` (one windowing, one hash: a few milliseconds for 512 × 512)."""
    return SliceContext(
        model_grey(ct, cfg), ct.spacing_mm, cfg, slice_digest(ct.pixels, ct.spacing_mm), preprocess_digest(cfg)
    )


@dataclass(frozen=True)
class ScoreCounts:
    """(cell, member) evaluations: run through the network, and taken from the cache; and the engine that ran them."""

    computed: int
    reused: int
    engine: str = ""


def score_cells(
    context: SliceContext,
    cells: np.ndarray,
    model: object,
    *,
    engine: Engine | None = None,
    cache: PatchCache | None = None,
    batch_size: int = INFERENCE_BATCH,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, ScoreCounts]:
    """Probability of early recurrence of each cell under each member of ``model``.

    Args:
        context: the slice (:func:`slice_context`).
        cells: (M, 2) int lattice cells.
        model: a :class:`models.checkpoint.LoadedModel` (its ``ensemble`` and ``cache_id``).
        engine: runs the members; default the model's own (:func:`core.engine.engine_of`).
        cache: where answers are looked up and kept; ``None`` computes everything.
        progress: ``progress(done, total)`` over the evaluations actually run (never called
            when the cache holds them all).

    Returns:
        (M, K) float64 probabilities (K members), and the counts.

    When the model's own converted engine fails (a runtime's fault), the model is put on the
    default fp32 engine for good (:func:`core.engine.fall_back_to_default`) and the cells are
    scored again there; the counts name the engine that answered.
    """
    chosen = engine or engine_of(model)
    if chosen.set_aside:  # failed since the caller took it: the model's engine answers now
        chosen = engine_of(model)
    own = chosen is getattr(model, "engine", None)
    try:
        return _score_with(chosen, context, cells, model, cache, batch_size, progress)
    except EngineFault:
        # the model's converted runtime gives way to its fp32 networks (also when another analysis
        # set it aside meanwhile); the default engine has nothing to give way to, and an engine of
        # the caller's own is the caller's
        if not (own or chosen.set_aside) or chosen.backend in DEFAULT_BACKENDS:
            raise
        log.warning("the %s engine failed during an analysis; falling back to fp32", chosen.name, exc_info=True)
    # out of the except block: its traceback would keep the failed pass's runtime and patches alive
    fallback = fall_back_to_default(model, chosen)
    return _score_with(fallback, context, cells, model, cache, batch_size, progress)


def _score_with(
    engine: Engine,
    context: SliceContext,
    cells: np.ndarray,
    model: object,
    cache: PatchCache | None,
    batch_size: int,
    progress: ProgressFn | None,
) -> tuple[np.ndarray, ScoreCounts]:
    """:func:`score_cells` on one engine.

    Raises:
        EngineFault: a member's runtime failed, or the engine was set aside (its predictors dropped).
    """
    predictors = engine.predictors  # read once: a fallback elsewhere may drop them meanwhile
    if engine.set_aside or not predictors:
        raise EngineFault(f"the {engine.name} engine was set aside")
    n_members = len(predictors)
    out = np.full((len(cells), n_members), np.nan, dtype=np.float64)
    prefix = (context.slice_key, context.cfg_key, getattr(model, "cache_id", id(model)))
    keys: list[list[tuple]] = []
    if cache is not None:  # keys only where a cache will use them: M × K tuples are not free on large cases
        keys = [[(*prefix, member, engine.backend, int(i), int(j)) for i, j in cells] for member in range(n_members)]
        for member in range(n_members):
            out[:, member] = cache.lookup(keys[member])
    todo = np.isnan(out)
    need_cut = np.flatnonzero(todo.any(axis=1))
    total = int(todo.sum())
    patches = cut_cells(context.grey, context.spacing_mm, context.cfg, cells[need_cut])
    row_of = np.full(len(cells), -1, dtype=np.int64)
    row_of[need_cut] = np.arange(len(need_cut))
    done = 0
    for member, predictor in enumerate(predictors):
        rows = np.flatnonzero(todo[:, member])
        if len(rows) == 0:
            continue

        def report(batch_done: int, _: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + batch_done, total)

        probs = predict_patches(
            guarded(predictor),  # a runtime's failure, told apart from the rest
            patches if len(rows) == len(need_cut) else patches[row_of[rows]],  # no copy when every patch runs
            context.cfg,
            batch_size=batch_size,
            device=engine.device,
            precision="fp32",  # the engine carries its own precision
            progress=report,
        )
        out[rows, member] = probs
        done += len(rows)
        if cache is not None:
            finite = np.isfinite(probs)  # a broken answer is never kept
            cache.store([keys[member][r] for r in rows[finite]], probs[finite])
    return out, ScoreCounts(computed=total, reused=int(out.size - total), engine=engine.name)
