"""The CPU at hand: model name, cores and the ISA extensions that decide INT8 speed.

Speed-ups measured on one CPU do not carry over to another (INT8 gains most with VNNI or AMX),
and ``/proc/cpuinfo`` names some very different machines alike ("AMD EPYC" with AVX-512 VNNI
and "AMD EPYC" with AVX2 only), so measurements are keyed by :meth:`CpuInfo.key`: the model
name, the ISA extensions and the usable core count. Linux reads ``/proc/cpuinfo``; macOS
``sysctl``; elsewhere ``platform.processor()`` with unknown flags.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ISA label -> flag names (as /proc/cpuinfo spells them) any of which means it is present
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni"),
    "AMX": ("amx_tile", "amx_int8", "amxtile", "amxint8"),
}


@dataclass(frozen=True)
class CpuInfo:
    """What xcam records beside a speed measurement."""

    model: str
    cores: int  # usable by this process
    logical: int  # logical CPUs of the machine
    flags: frozenset[str]  # the ISA-relevant flags found (lower case), empty when unknown
    source: str  # /proc/cpuinfo | sysctl | platform

    @property
    def isa(self) -> list[str]:
        """ISA labels present, e.g. ``["AVX2", "AVX-512", "VNNI"]`` (``[]`` when unknown)."""
        return [label for label, names in ISA_FLAGS.items() if self.flags & set(names)]

    def describe(self) -> str:
        """One phrase: ``AMD EPYC (AVX2; 2 cores)``."""
        return f"{self.model} ({', '.join(self.isa) or 'ISA unknown'}; {self.cores} cores)"

    def key(self) -> str:
        """The key of measurements on this kind of machine: model, ISA and usable cores."""
        model = re.sub(r"[^A-Za-z0-9.]+", "-", self.model).strip("-") or "unknown-cpu"
        return f"{model}|{'+'.join(self.isa) or 'isa-unknown'}|{self.cores}c"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "cores": self.cores, "logical": self.logical, "isa": self.isa,
                "flags": sorted(self.flags), "source": self.source, "key": self.key()}


_WANTED = {name for names in ISA_FLAGS.values() for name in names}


def parse_proc_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """Model name and ISA-relevant flags of the first processor in ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split()) & _WANTED
        if model and flags:
            break
    return model, flags


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached for the process)."""
    cores, logical = _usable_cores(), os.cpu_count() or 1
    proc = Path("/proc/cpuinfo")
    if proc.is_file():
        try:
            model, flags = parse_proc_cpuinfo(proc.read_text(errors="replace"))
        except OSError:
            model, flags = "", frozenset()
        if model:
            return CpuInfo(model, cores, logical, flags, "/proc/cpuinfo")
    brand = _sysctl("machdep.cpu.brand_string")
    if brand:  # macOS (Intel: feature lists; Apple silicon: no x86 flags)
        features = f"{_sysctl('machdep.cpu.features')} {_sysctl('machdep.cpu.leaf7_features')}".lower()
        names = {f.replace(".", "_") for f in features.split()}
        names |= {"avx512f"} if "avx512f" in features else set()
        return CpuInfo(brand, cores, logical, frozenset(names) & _WANTED, "sysctl")
    return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", cores, logical, frozenset(),
                   "platform")
