"""A scriptable stand-in for the ``pynvml`` module (nvidia-ml-py).

Only what ``ResourceMonitor`` calls. Errors mimic pynvml's: ``NVMLError``
carries the NVML return code in ``.value``.

Memory comes in both of NVML's shapes, as nvidia-ml-py exposes them:
``nvmlDeviceGetMemoryInfo(handle)`` (v1: ``used`` includes the reserved
memory) and ``nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)`` (v2:
``reserved`` apart, ``total = reserved + used + free``). By default the fake
is a current driver and binding; ``memory_v2_error`` makes it a driver
without v2 (pynvml raises ``FUNCTION_NOT_FOUND`` when the library lacks the
``nvmlDeviceGetMemoryInfo_v2`` symbol), ``binding_v2=False`` an
nvidia-ml-py older than 11.515 (no ``nvmlMemory_v2``, no ``version``
parameter: ``TypeError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, List, Optional, Set, Union

NVML_TEMPERATURE_GPU = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999
#: pynvml's version argument for nvmlMemory_v2_t: sizeof(struct) | 2 << 24
nvmlMemory_v2 = 0x02000028


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: Union[str, bytes]
    utilization_percent: int = 0
    #: allocated memory, without the reserved part (what v2 and nvidia-smi call used)
    memory_used: int = 0
    memory_total: int = 0
    #: memory the driver and firmware reserve: apart in v2, inside used in v1
    memory_reserved: int = 0
    temperature: int = 0
    power_mw: int = 0
    #: fields that raise NVML_ERROR_UNKNOWN: utilization, memory (both versions), memory_v2 (v2 only),
    #: temperature, power
    failing: Set[str] = field(default_factory=set)
    #: fields that raise NVML_ERROR_NOT_SUPPORTED (same names)
    unsupported: Set[str] = field(default_factory=set)


class FakeNvml:
    """``FakeNvml([FakeGpu(...), ...])``; flip ``broken`` to make every call fail.

    ``memory_v2_error``: the NVML code every v2 memory call raises (a driver
    without v2: ``NVML_ERROR_FUNCTION_NOT_FOUND``), or ``None``.
    ``binding_v2``: ``False`` for a binding without ``nvmlMemory_v2`` and the
    ``version`` parameter. ``v2_used_includes_reserved``: v2 ``used`` with the
    reserved memory in it, as NVML's R525 reference documents it.
    """

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND

    def __init__(self, gpus: List[FakeGpu], *, init_error: Optional[int] = None,
                 memory_v2_error: Optional[int] = None, binding_v2: bool = True,
                 v2_used_includes_reserved: bool = False) -> None:
        self.gpus = gpus
        self.init_error = init_error  # an NVML code nvmlInit raises, or None
        self.memory_v2_error = memory_v2_error
        self.binding_v2 = binding_v2
        self.v2_used_includes_reserved = v2_used_includes_reserved
        if binding_v2:
            self.nvmlMemory_v2 = nvmlMemory_v2
        self.broken = False  # every call after init raises GPU_IS_LOST
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0
        #: calls per field; "memory" counts v1 memory calls, "memory_v2" v2 ones
        self.field_calls = {"utilization": 0, "memory": 0, "memory_v2": 0, "temperature": 0, "power": 0}

    # ---------------------------------------------------------------- lifecycle

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._check()
        self.initialized = False

    # ---------------------------------------------------------------- devices

    def _check(self) -> None:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if self.broken:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    def _field(self, handle: int, what: str, *also: str) -> FakeGpu:
        """The GPU behind ``handle``, raising as set up for ``what`` (or any of ``also``)."""
        self._check()
        self.field_calls[what] += 1
        gpu = self.gpus[handle]
        names = {what, *also}
        if names & gpu.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if names & gpu.failing:
            raise NVMLError(NVML_ERROR_UNKNOWN)
        return gpu

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check()
        return index

    def nvmlDeviceGetName(self, handle: int) -> Union[str, bytes]:
        self._check()
        return self.gpus[handle].name

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        gpu = self._field(handle, "utilization")
        return SimpleNamespace(gpu=gpu.utilization_percent, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int, **kwargs: Any) -> SimpleNamespace:
        if not kwargs:  # v1: reserved memory counted as used
            gpu = self._field(handle, "memory")
            used = gpu.memory_used + gpu.memory_reserved
            return SimpleNamespace(total=gpu.memory_total, used=used, free=gpu.memory_total - used)
        if not self.binding_v2 or set(kwargs) != {"version"}:
            raise TypeError(f"nvmlDeviceGetMemoryInfo() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if self.memory_v2_error is not None or kwargs["version"] != nvmlMemory_v2:
            self._check()
            self.field_calls["memory_v2"] += 1
            raise NVMLError(self.memory_v2_error or NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        gpu = self._field(handle, "memory_v2", "memory")
        free = gpu.memory_total - gpu.memory_used - gpu.memory_reserved
        used = gpu.memory_used + gpu.memory_reserved if self.v2_used_includes_reserved else gpu.memory_used
        return SimpleNamespace(version=nvmlMemory_v2, total=gpu.memory_total, reserved=gpu.memory_reserved,
                               free=free, used=used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return self._field(handle, "temperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._field(handle, "power").power_mw
