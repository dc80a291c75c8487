"""What the CPU can do for inference: AVX2, AVX-512, native bfloat16 (AVX-512 BF16 / AMX), VNNI.

Read from ``/proc/cpuinfo`` (torch's own CPUID probe elsewhere), less whatever an ISA cap
forbids: ``ONEDNN_MAX_CPU_ISA=AVX2`` with ``ATEN_CPU_CAPABILITY=avx2`` is how an AVX2-only
CPU is emulated on a bigger one, and a capped CPU must not be told it has BF16 (bf16 would
then be emulated, about 5× slower than fp32).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Instruction-set levels as oneDNN names them, lowest first; a cap removes every feature above it.
_ISA_LEVELS = (
    "sse41",
    "avx",
    "avx2",
    "avx2_vnni",
    "avx512_core",
    "avx512_core_vnni",
    "avx512_core_bf16",
    "avx512_core_amx",
)
_FEATURE_LEVEL = {  # the lowest ISA level at which each feature is usable
    "avx2": "avx2",
    "avx_vnni": "avx2_vnni",
    "avx512f": "avx512_core",
    "avx512_vnni": "avx512_core_vnni",
    "avx512_bf16": "avx512_core_bf16",
    "amx_bf16": "avx512_core_amx",
    "amx_int8": "avx512_core_amx",
}
_ATEN_CAPS = {"default": "sse41", "avx2": "avx2", "avx512": "avx512_core"}


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU offers the engine, after any ISA cap.

    Attributes:
        model: the CPU's model name.
        flags: the features that matter here (keys of ``_FEATURE_LEVEL``) that are usable.
        isa_cap: the ISA level a cap environment variable imposes, or ``None``.
        logical_cpus: processors the OS reports; ``threads``: torch's intra-op threads.
    """

    model: str
    flags: frozenset[str]
    isa_cap: str | None
    logical_cpus: int
    threads: int

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def bf16(self) -> bool:
        """Native bfloat16 arithmetic (AVX-512 BF16 or AMX); without it bf16 is emulated and slow."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        """int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI), what makes int8 inference pay."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def isa_class(self) -> str:
        """ "avx512-bf16", "avx512", "avx2" or "older": the CPU classes the project's targets name."""
        if self.avx512 and self.bf16:
            return "avx512-bf16"
        return "avx512" if self.avx512 else "avx2" if self.avx2 else "older"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "flags": sorted(self.flags),
            "isa_cap": self.isa_cap,
            "isa_class": self.isa_class,
            "logical_cpus": self.logical_cpus,
            "threads": self.threads,
        }


def detect_cpu_features(cpuinfo: str | None = None, env: dict[str, str] | None = None) -> CpuFeatures:
    """The CPU's features from ``/proc/cpuinfo`` (or torch's own probe elsewhere), less any ISA cap.

    Args:
        cpuinfo: text in /proc/cpuinfo's format (tests pass their own); read from the OS when ``None``.
        env: environment to read the caps from (default ``os.environ``): ``ONEDNN_MAX_CPU_ISA``
            (e.g. ``AVX2``) and ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``).
    """
    env = dict(os.environ) if env is None else env
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = _parse_cpuinfo(cpuinfo)
    if not flags:  # not Linux: ask torch, which probes CPUID itself
        capability = torch.backends.cpu.get_cpu_capability().lower()
        flags = {"avx2"} if capability in ("avx2", "avx512") else set()
        if capability == "avx512":
            flags.add("avx512f")
        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            flags.add("avx512_bf16")
        if getattr(torch.cpu, "_is_avx512_vnni_supported", lambda: False)():
            flags.add("avx512_vnni")
        model = model or platform.processor() or "unknown CPU"
    cap = _isa_cap(env)
    if cap is not None:
        limit = _ISA_LEVELS.index(cap)
        flags = {f for f in flags if _ISA_LEVELS.index(_FEATURE_LEVEL[f]) <= limit}
    return CpuFeatures(model, frozenset(flags), cap, os.cpu_count() or 1, torch.get_num_threads())


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split()) & set(_FEATURE_LEVEL)
    return model, flags


def _isa_cap(env: dict[str, str]) -> str | None:
    """The lowest ISA level the cap variables allow, or ``None`` without a cap."""
    caps = []
    onednn = env.get("ONEDNN_MAX_CPU_ISA", env.get("DNNL_MAX_CPU_ISA", "")).strip().lower()
    if onednn and onednn != "all":
        caps.append(onednn if onednn in _ISA_LEVELS else "avx512_core_amx" if "amx" in onednn else None)
    aten = env.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _ATEN_CAPS:
        caps.append(_ATEN_CAPS[aten])
    caps = [c for c in caps if c is not None]
    return min(caps, key=_ISA_LEVELS.index) if caps else None


def native_bf16() -> bool:
    """Whether bfloat16 is native here (after any ISA cap): the one test the training code and engine share."""
    return _cached_features().bf16


@functools.cache
def _cached_features() -> CpuFeatures:
    return detect_cpu_features()


def process_status_mib(field: str) -> float | None:
    """A memory figure of this process from Linux's ``/proc/self/status``, in MiB; ``None`` where there is none.

    ``field`` is the line's name: ``VmHWM`` (peak resident), ``RssAnon`` (resident anonymous), …
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
