"""A scriptable stand-in for the ``pynvml`` module (nvidia-ml-py).

Only what ``ResourceMonitor`` calls. Errors mimic pynvml's: ``NVMLError``
carries the NVML return code in ``.value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import List, Optional, Set, Union

NVML_TEMPERATURE_GPU = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: Union[str, bytes]
    utilization_percent: int = 0
    memory_used: int = 0
    memory_total: int = 0
    temperature: int = 0
    power_mw: int = 0
    #: fields that raise NVML_ERROR_UNKNOWN: utilization, memory, temperature, power
    failing: Set[str] = field(default_factory=set)
    #: fields that raise NVML_ERROR_NOT_SUPPORTED
    unsupported: Set[str] = field(default_factory=set)


class FakeNvml:
    """``FakeNvml([FakeGpu(...), ...])``; flip ``broken`` to make every call fail."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND

    def __init__(self, gpus: List[FakeGpu], *, init_error: Optional[int] = None) -> None:
        self.gpus = gpus
        self.init_error = init_error  # an NVML code nvmlInit raises, or None
        self.broken = False  # every call after init raises GPU_IS_LOST
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.field_calls = {"utilization": 0, "memory": 0, "temperature": 0, "power": 0}

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

    def _field(self, handle: int, what: str) -> FakeGpu:
        self._check()
        self.field_calls[what] += 1
        gpu = self.gpus[handle]
        if what in gpu.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if what in gpu.failing:
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

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self._field(handle, "memory")
        return SimpleNamespace(total=gpu.memory_total, used=gpu.memory_used,
                               free=gpu.memory_total - gpu.memory_used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return self._field(handle, "temperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._field(handle, "power").power_mw
