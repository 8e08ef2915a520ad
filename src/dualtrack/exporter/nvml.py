"""``NvmlReader``: GPUs through NVML, with its lifecycle and retry backoff.

The reader owns one NVML session: it initialises NVML on the first read,
enumerates the devices, reads each device's utilisation, memory,
temperature and power, and shuts NVML down on :meth:`NvmlReader.close`.

- No NVIDIA driver (or library) is the normal state of most machines: GPUs
  are absent and nothing is counted as an error.
- A field NVML reports as not supported for a GPU is absent for that GPU
  and never asked again.
- Memory is read with NVML's v2 memory info
  (``nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)``, calling
  ``nvmlDeviceGetMemoryInfo_v2``), whose ``used`` leaves out the memory the
  driver and firmware reserve and reports it apart as ``reserved``: that is
  what ``nvidia-smi`` shows. The v1 call counts reserved memory as used (an
  idle H200 read 615 MiB used where ``nvidia-smi`` said 0). A driver without
  v2 (``NVMLError_FunctionNotFound``, ``NotSupported``...) or a binding
  without the ``version`` parameter (``TypeError``) or ``nvmlMemory_v2``
  falls back to v1 for that GPU for the rest of the session: tried once,
  logged once at INFO, reserved memory absent.
- If ``nvmlInit`` fails, or NVML stops answering mid-run (every device read
  fails), NVML is shut down, GPUs are absent, and initialisation is retried
  with exponential backoff (:data:`NVML_RETRY_INITIAL_SECONDS` doubling to
  :data:`NVML_RETRY_MAX_SECONDS`, on the injected clock), not every reading.
  One good read resets the backoff.

Usage (the monitor does this; tests pass ``tests/fakes/fake_nvml.py``)::

    import pynvml
    reader = NvmlReader(pynvml, clock=SYSTEM_CLOCK, errors=ReadErrors())
    gpus = reader.read()                 # tuple of GpuReading, empty when absent
    reader.close()
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from ..clock import Clock
from .read_errors import ReadErrors, log
from .readings import GpuReading, clamp_ratio

NVML_RETRY_INITIAL_SECONDS = 30.0
NVML_RETRY_MAX_SECONDS = 600.0

# pynvml error codes; read from the module when it has them.
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12


_MEMORY_V1_NOTE = ("NVML has no v2 memory info here (older driver or nvidia-ml-py); GPU memory used "
                   "includes driver-reserved memory and dualtrack_gpu_memory_reserved_bytes is absent")


@dataclass
class _Gpu:
    """An enumerated NVML device, the fields it does not support and whether it answers v2 memory info."""

    index: int
    handle: Any
    name: str
    unsupported: Set[str] = field(default_factory=set)
    memory_v1_only: bool = False


class _Memory(NamedTuple):
    used: int  # excludes reserved whenever reserved is known
    total: int
    reserved: Optional[int]  # None: v1 only, the driver does not tell


class _NvmlDown(Exception):
    """NVML stopped answering as a whole (not one field of one GPU)."""


class NvmlReader:
    """Reads every GPU through ``nvml`` (the ``pynvml`` module, or a fake).

    ``clock`` times the retry backoff; ``errors`` receives every failed read
    (resource ``gpu``). Not thread-safe: the caller reads from one thread at
    a time.
    """

    def __init__(self, nvml: Any, *, clock: Clock, errors: ReadErrors) -> None:
        self._nv: Any = nvml
        self._clock = clock
        self._errors = errors
        self._ready = False
        self._next_try = -math.inf
        self._backoff = NVML_RETRY_INITIAL_SECONDS
        self._gpus: List[_Gpu] = []
        # The version argument that selects nvmlMemory_v2_t; bindings older than
        # nvidia-ml-py 11.515 have neither it nor the ``version`` parameter.
        self._memory_v2: Optional[int] = getattr(nvml, "nvmlMemory_v2", None)

    def read(self) -> Tuple[GpuReading, ...]:
        """One reading per GPU; empty while NVML is absent, down or waiting to retry."""
        now = self._clock.monotonic()
        if not self._ready and not self._start(now):
            return ()
        try:
            readings = self._read_devices()
        except _NvmlDown as err:
            self._shutdown()
            self._retry_later(now)
            self._errors.log_once("gpu", err.__cause__, f"NVML stopped answering; GPUs absent, retry in "
                                  f"{self._next_try - now:.0f}s")
            return ()
        self._backoff = NVML_RETRY_INITIAL_SECONDS  # healthy again
        return readings

    def close(self) -> None:
        """Shut NVML down. A later :meth:`read` may start it again at once, without waiting out a backoff."""
        self._shutdown()
        self._next_try = -math.inf

    # ------------------------------------------------------------ lifecycle

    def _start(self, now: float) -> bool:
        if now < self._next_try:
            return False
        nv = self._nv
        try:
            nv.nvmlInit()
        except Exception as err:
            self._retry_later(now)
            code = getattr(err, "value", None)
            no_driver = code in (getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", _NVML_ERROR_LIBRARY_NOT_FOUND),
                                 getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", _NVML_ERROR_DRIVER_NOT_LOADED))
            if no_driver or isinstance(err, OSError):
                # No NVIDIA driver is the normal state of most machines: GPUs
                # are absent, not failing, so this is not a read error.
                self._errors.log_once("gpu", err, "NVML not available; no GPU metrics", level=logging.INFO)
            else:
                self._errors.count("gpu", err, "nvmlInit failed; GPUs absent, retrying with backoff")
            return False
        self._ready = True
        try:
            self._gpus = self._enumerate()
        except Exception as err:
            self._errors.count("gpu", err, "NVML device enumeration failed; GPUs absent, retrying with backoff")
            self._shutdown()
            self._retry_later(now)
            return False
        log.info("NVML started: %d GPU(s): %s", len(self._gpus), ", ".join(g.name for g in self._gpus))
        if self._memory_v2 is None and self._gpus:
            self._errors.log_once("gpu", None, _MEMORY_V1_NOTE, level=logging.INFO)
        return True

    def _retry_later(self, now: float) -> None:
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, NVML_RETRY_MAX_SECONDS)

    def _shutdown(self) -> None:
        if not self._ready:
            return
        self._ready = False
        self._gpus = []
        try:
            self._nv.nvmlShutdown()
        except Exception as err:  # it may be the very thing that is broken
            log.debug("nvmlShutdown failed: %r", err)

    # ------------------------------------------------------------ devices

    def _enumerate(self) -> List[_Gpu]:
        nv = self._nv
        gpus = []
        for index in range(int(nv.nvmlDeviceGetCount())):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            try:
                name = nv.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):  # older bindings return bytes
                    name = name.decode("utf-8", "replace")
                name = str(name).strip() or "unknown"
            except Exception as err:
                self._errors.count("gpu", err, "nvmlDeviceGetName failed")
                name = "unknown"
            gpus.append(_Gpu(index, handle, name))
        return gpus

    def _read_devices(self) -> Tuple[GpuReading, ...]:
        nv = self._nv
        try:
            count = int(nv.nvmlDeviceGetCount())
            if count != len(self._gpus):
                self._gpus = self._enumerate()
        except Exception as err:
            self._errors.count("gpu", err, "nvmlDeviceGetCount failed")
            raise _NvmlDown() from err
        readers: Tuple[Tuple[str, Callable[[_Gpu], Any]], ...] = (
            ("utilization", lambda g: clamp_ratio(nv.nvmlDeviceGetUtilizationRates(g.handle).gpu / 100.0)),
            ("memory", self._read_memory),
            ("temperature", lambda g: float(nv.nvmlDeviceGetTemperature(
                g.handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0)))),
            ("power", lambda g: nv.nvmlDeviceGetPowerUsage(g.handle) / 1000.0),  # milliwatts
        )
        not_supported = getattr(nv, "NVML_ERROR_NOT_SUPPORTED", _NVML_ERROR_NOT_SUPPORTED)
        attempts = failures = 0
        last_error: Optional[Exception] = None
        readings = []
        for gpu in self._gpus:
            values: Dict[str, Any] = {}
            for what, read in readers:
                if what in gpu.unsupported:
                    continue
                attempts += 1
                try:
                    values[what] = read(gpu)
                except Exception as err:
                    if getattr(err, "value", None) == not_supported:
                        # Absent for this GPU for good: stop asking, do not count.
                        gpu.unsupported.add(what)
                        attempts -= 1
                        continue
                    failures += 1
                    last_error = err
                    self._errors.count("gpu", err, f"NVML could not read {what} of GPU {gpu.index}")
            mem: Optional[_Memory] = values.get("memory")
            readings.append(GpuReading(
                index=gpu.index,
                name=gpu.name,
                utilization_ratio=values.get("utilization"),
                memory_used_bytes=mem.used if mem is not None else None,
                memory_total_bytes=mem.total if mem is not None else None,
                temperature_celsius=values.get("temperature"),
                power_watts=values.get("power"),
                memory_reserved_bytes=mem.reserved if mem is not None else None,
            ))
        if attempts and failures == attempts:
            raise _NvmlDown() from last_error
        return tuple(readings)

    def _read_memory(self, gpu: _Gpu) -> _Memory:
        """``gpu``'s memory through v2 where it answers, else v1; raises what v1 raises."""
        nv = self._nv
        if self._memory_v2 is not None and not gpu.memory_v1_only:
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(gpu.handle, version=self._memory_v2)
            except Exception as v2_error:
                # Whatever v2 failed with (no symbol, not supported, a binding
                # without ``version``, or the "Unknown Error" WSL drivers give),
                # v1 answering now means v2 is what this GPU lacks: stay on v1.
                # If v1 fails too, its error is the reading's (v2 tried again next time).
                v1 = nv.nvmlDeviceGetMemoryInfo(gpu.handle)
                gpu.memory_v1_only = True
                self._errors.log_once("gpu", v2_error, _MEMORY_V1_NOTE, level=logging.INFO)
                return _Memory(used=int(v1.used), total=int(v1.total), reserved=None)
            used, reserved, total, free = int(mem.used), int(mem.reserved), int(mem.total), int(mem.free)
            if used + free == total:
                # v1's accounting (total = used + free), which the R525 reference
                # documents for v2 too: reserved is inside used. Later drivers
                # report them apart (total = reserved + used + free).
                used = max(used - reserved, 0)
            return _Memory(used=used, total=total, reserved=reserved)
        mem = nv.nvmlDeviceGetMemoryInfo(gpu.handle)
        return _Memory(used=int(mem.used), total=int(mem.total), reserved=None)
