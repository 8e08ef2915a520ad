"""Injectable fakes of the outside world (psutil, NVML) for the resource monitor tests."""
