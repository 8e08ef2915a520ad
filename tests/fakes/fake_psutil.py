"""A scriptable stand-in for the parts of ``psutil`` that ``ResourceMonitor`` uses.

Every reading is an attribute; set it to an exception instance to make the
call raise it. ``battery`` / ``temperatures`` set to ``MISSING`` remove the
function altogether, as on platforms psutil does not support.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Dict, List, Union

POWER_TIME_UNKNOWN = -1
POWER_TIME_UNLIMITED = -2

sbattery = namedtuple("sbattery", ["percent", "secsleft", "power_plugged"])
shwtemp = namedtuple("shwtemp", ["label", "current", "high", "critical"])
svmem = namedtuple("svmem", ["total", "available", "percent", "used", "free"])
pmem = namedtuple("pmem", ["rss", "vms"])

MISSING: Any = object()


class Error(Exception):
    pass


class NoSuchProcess(Error):
    def __init__(self, pid: int) -> None:
        super().__init__(f"process PID not found (pid={pid})")
        self.pid = pid


class AccessDenied(Error):
    pass


@dataclass
class FakeProc:
    rss: Union[int, BaseException] = 50 * 1024 * 1024
    cpu_percent: Union[float, BaseException] = 0.0


def _give(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class FakePsutil:
    POWER_TIME_UNKNOWN = POWER_TIME_UNKNOWN
    POWER_TIME_UNLIMITED = POWER_TIME_UNLIMITED
    NoSuchProcess = NoSuchProcess
    AccessDenied = AccessDenied
    Error = Error

    def __init__(self, *, battery: Any = MISSING, temperatures: Any = MISSING, ncpu: int = 4) -> None:
        self.cpu: Union[float, BaseException] = 10.0  # percent
        self.memory: Union[svmem, BaseException] = svmem(16 << 30, 12 << 30, 25.0, 4 << 30, 12 << 30)
        self.ncpu = ncpu
        #: pid -> process; a pid not here raises NoSuchProcess
        self.procs: Dict[int, FakeProc] = {}
        self.process_calls: List[int] = []
        self.battery = battery
        self.temperatures = temperatures

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not set on the instance or class.
        if name == "sensors_battery" and self.battery is not MISSING:
            return lambda: _give(self.battery)
        if name == "sensors_temperatures" and self.temperatures is not MISSING:
            return lambda fahrenheit=False: _give(self.temperatures)
        raise AttributeError(name)

    def cpu_percent(self, interval: Any = None, percpu: bool = False) -> float:
        assert interval is None, "the monitor must never block in cpu_percent"
        return _give(self.cpu)

    def cpu_count(self, logical: bool = True) -> int:
        return self.ncpu

    def virtual_memory(self) -> svmem:
        return _give(self.memory)

    def Process(self, pid: int) -> "_Process":
        self.process_calls.append(pid)
        if pid not in self.procs:
            raise NoSuchProcess(pid)
        return _Process(self, pid)


class _Process:
    def __init__(self, owner: FakePsutil, pid: int) -> None:
        self._owner = owner
        self.pid = pid

    def _state(self) -> FakeProc:
        state = self._owner.procs.get(self.pid)
        if state is None:
            raise NoSuchProcess(self.pid)
        return state

    def memory_info(self) -> pmem:
        return pmem(_give(self._state().rss), 0)

    def cpu_percent(self, interval: Any = None) -> float:
        assert interval is None
        return _give(self._state().cpu_percent)
