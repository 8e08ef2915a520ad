"""Manual check of dualtrack's NVML path on a real NVIDIA GPU, against ``nvidia-smi``.

Not part of the test suite: pytest never collects it, and it needs hardware. Run it
by hand on a machine with an NVIDIA GPU, ``nvidia-smi``, nvidia-ml-py and PyTorch::

    python tools/gpu_check.py        # from anywhere; results in $OUT/gpu_check.json (or /tmp)

On GPU 0 it

1. times the NVML calls one monitor sample makes (v1 and v2 memory info both);
2. starts a ``DualTrackOptimizer`` (strategy ``resource_efficient``, ``/metrics`` on
   ``GPU_CHECK_PORT``, default 9464) and compares its GPU gauges with ``nvidia-smi``
   at idle, while a child process holds ``GPU_CHECK_ALLOC_GIB`` GiB (default 80, at
   most 60 % of the card) and runs matmuls, and after it exits. Memory used and
   reserved are compared with ``nvidia-smi``'s ``memory.used`` and
   ``memory.reserved`` (the latter only where this ``nvidia-smi`` has the field);
   a difference within ``TOLERANCE_MIB`` counts as a match;
3. runs ``adapt_now()`` in each phase, to show the GPU-memory rule (limit 80 % of the
   allocation) firing under load and recovering after.

Measured on an NVIDIA H200 (2026-12) while dualtrack still read NVML's v1 memory
info: utilisation, temperature and power matched ``nvidia-smi``; memory used read
615 MiB above it at idle (driver-reserved memory, which v1 counts as used); NVML
calls took 3-10 us each. dualtrack now reads v2, which reports that memory apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

# The working tree's package, whether or not it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pynvml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from dualtrack import (  # noqa: E402
    DualTrackOptimizer,
    OptimizationConfig,
    OptimizationStrategy,
    ResourceConstraints,
)

MIB = 1 << 20
GIB = 1 << 30
TOLERANCE_MIB = 64.0  # nvidia-smi rounds to MiB, and reads a moment apart from the monitor
OUT = Path(os.environ.get("OUT", "/tmp"))
PORT = int(os.environ.get("GPU_CHECK_PORT", "9464"))

#: nvidia-smi --query-gpu fields -> keys in the results
SMI_FIELDS = {
    "utilization.gpu": "util_pct",
    "memory.used": "mem_used_mib",
    "memory.reserved": "mem_reserved_mib",
    "memory.total": "mem_total_mib",
    "temperature.gpu": "temp_c",
    "power.draw": "power_w",
}
#: dualtrack gauges -> nvidia-smi keys they are compared with, and the factor from the gauge's unit
COMPARED: Tuple[Tuple[str, str, float], ...] = (
    ("dualtrack_gpu_memory_used_bytes", "mem_used_mib", 1 / MIB),
    ("dualtrack_gpu_memory_reserved_bytes", "mem_reserved_mib", 1 / MIB),
    ("dualtrack_gpu_memory_total_bytes", "mem_total_mib", 1 / MIB),
)


def smi_known_fields() -> List[str]:
    """The fields of :data:`SMI_FIELDS` this nvidia-smi can query (older ones lack ``memory.reserved``)."""
    help_text = subprocess.run(["nvidia-smi", "--help-query-gpu"], capture_output=True, text=True).stdout
    return [f for f in SMI_FIELDS if f'"{f}"' in help_text]


def smi(fields: List[str]) -> Dict[str, Optional[float]]:
    """GPU 0 as nvidia-smi reads it; a field it cannot read ("[N/A]") or does not know is ``None``."""
    out = subprocess.run(["nvidia-smi", "-i", "0", f"--query-gpu={','.join(fields)}",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True).stdout
    values = dict(zip(fields, (v.strip() for v in out.strip().split(",")), strict=True))
    result: Dict[str, Optional[float]] = {}
    for field, key in SMI_FIELDS.items():
        try:
            result[key] = float(values[field])
        except (KeyError, ValueError):
            result[key] = None
    return result


def scrape(port: int) -> Dict[str, float]:
    """GPU 0's ``dualtrack_gpu_*`` gauges and the read-error counts, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("dualtrack_gpu_") and sample.labels.get("gpu") == "0":
                values[sample.name] = sample.value
            elif sample.name == "dualtrack_resource_read_errors_total":
                values[f"read_errors_{sample.labels['resource']}"] = sample.value
    return values


def compare(smi_values: Dict[str, Optional[float]], metrics: Dict[str, float]) -> Dict[str, Any]:
    """dualtrack minus nvidia-smi in MiB per compared gauge, and whether it is within tolerance."""
    result: Dict[str, Any] = {"memory_info": "v2" if "dualtrack_gpu_memory_reserved_bytes" in metrics else "v1"}
    for gauge, key, factor in COMPARED:
        ours, theirs = metrics.get(gauge), smi_values.get(key)
        if ours is None or theirs is None:
            result[key] = {"dualtrack": ours, "nvidia_smi": theirs, "match": None}  # one side cannot tell
            continue
        diff = ours * factor - theirs
        result[key] = {"diff_mib": round(diff, 1), "match": abs(diff) <= TOLERANCE_MIB}
    return result


def nvml_call_costs() -> Dict[str, float]:
    """Microseconds per NVML call, over 500 calls each."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    calls: Dict[str, Callable[[Any], Any]] = {
        "util": pynvml.nvmlDeviceGetUtilizationRates,
        "mem_v1": pynvml.nvmlDeviceGetMemoryInfo,
        "temp": lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "power": pynvml.nvmlDeviceGetPowerUsage,
    }
    v2 = getattr(pynvml, "nvmlMemory_v2", None)
    if v2 is not None:
        calls["mem_v2"] = lambda h: pynvml.nvmlDeviceGetMemoryInfo(h, version=v2)
    costs = {}
    for name, call in calls.items():
        try:
            call(handle)
        except Exception as err:  # v2 on an older driver: record why, time the rest
            costs[name] = float("nan")
            print(f"nvml {name}: {err!r}", flush=True)
            continue
        start = time.perf_counter()
        for _ in range(500):
            call(handle)
        costs[name] = (time.perf_counter() - start) / 500 * 1e6
    return costs


def phase(results: Dict[str, Any], name: str, opt: DualTrackOptimizer, fields: List[str], cycles: int = 3) -> None:
    notes = []
    for _ in range(cycles):
        note = opt.adapt_now()
        notes.append({"local_bias": note.get("routing", {}).get("local_bias"),
                      "fired": note.get("fired"), "ok": note.get("ok")})
        time.sleep(1.2)
    rec = opt.get_optimization_recommendations("Summarise the attached report in three bullet points.")
    smi_values, metrics = smi(fields), scrape(PORT)
    results["phases"][name] = {
        "smi": smi_values, "metrics": metrics, "compare": compare(smi_values, metrics), "cycles": notes,
        "rec": {k: rec.get(k) for k in ("preferred_path", "routing", "overrides", "reasons", "source")},
    }
    print(name, json.dumps(results["phases"][name], default=str)[:2000], flush=True)


def main() -> int:
    fields = smi_known_fields()
    results: Dict[str, Any] = {"phases": {}, "nvidia_smi_fields": fields}
    if "memory.reserved" not in fields:
        print("this nvidia-smi has no memory.reserved field: reserved memory is not compared", flush=True)
    total_mib = smi(fields)["mem_total_mib"] or 0.0
    alloc_gib = float(os.environ.get("GPU_CHECK_ALLOC_GIB", min(80.0, 0.6 * total_mib / 1024)))
    results["alloc_gib"] = alloc_gib

    pynvml.nvmlInit()
    try:
        results["nvml_call_us"] = nvml_call_costs()
        print("nvml call us", results["nvml_call_us"], flush=True)
    finally:
        pynvml.nvmlShutdown()

    limit_mb = 0.8 * alloc_gib * 1024  # below the allocation, so the GPU-memory rule fires under load
    cfg = OptimizationConfig(strategy=OptimizationStrategy.RESOURCE_EFFICIENT, metrics_port=PORT,
                             adaptation_interval_seconds=2.0, monitor_interval_seconds=0.5,
                             constraints=ResourceConstraints(max_gpu_memory_mb=limit_mb, max_memory_mb=65536.0))
    opt = DualTrackOptimizer(cfg)
    opt.start()
    try:
        time.sleep(3)
        phase(results, "idle", opt, fields)
        load = subprocess.Popen([sys.executable, "-c", f"""
import torch, time
held = torch.empty(int({alloc_gib} * 2**30), dtype=torch.uint8, device='cuda')
a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)
t = time.time()
while time.time() - t < 40:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
"""])
        time.sleep(10)
        phase(results, f"loaded_{alloc_gib:.0f}GiB", opt, fields, cycles=4)
        load.wait(timeout=120)
        time.sleep(6)
        phase(results, "after", opt, fields)
        results["status_resources"] = opt.get_optimization_status().get("resource_usage")
    finally:
        opt.stop()

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    mismatches = [(p, key) for p, r in results["phases"].items()
                  for key, c in r["compare"].items() if isinstance(c, dict) and c.get("match") is False]
    print("mismatches (dualtrack vs nvidia-smi beyond "
          f"{TOLERANCE_MIB:.0f} MiB):", mismatches or "none", flush=True)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
