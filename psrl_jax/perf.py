"""Peak FLOP/s of the devices we report on, for model-FLOPs utilisation (MFU) in launch/benchmark.py.

MFU = FLOPs per update from XLA's cost analysis x updates per second / the device's peak. Peaks are
dense (no structured sparsity), from the vendors' datasheets:

| device | float32 compute | bfloat16 compute |
| --- | --- | --- |
| NVIDIA H100 SXM / H200 | 494.7 TFLOP/s (TF32 tensor cores) | 989.4 TFLOP/s |
| NVIDIA H100 PCIe | 378 TFLOP/s (TF32) | 756 TFLOP/s |
| NVIDIA H200 NVL | 417.5 TFLOP/s (TF32) | 835.5 TFLOP/s |
| x86 CPU | cores x clock x 64 (AVX-512: 2 FMA units x 16 lanes x 2) or x 32 (AVX2) | same as float32 |

On these GPUs XLA runs float32 convolutions and matmuls on TF32 tensor cores at JAX's default
precision, so float32 MFU is measured against the TF32 peak (against the 67 TFLOP/s of plain FP32
CUDA cores it would read 7.4x higher). The CPU peak is an estimate from /proc/cpuinfo: a ceiling,
not a promise, since clocks drop under AVX-512 load.
"""

import os
import re

TFLOP = 1e12
GPU_PEAKS = (  # (substring of jax device_kind, float32 peak, bfloat16 peak); first match wins
    ("H100 PCIe", 378.0 * TFLOP, 756.0 * TFLOP),
    ("H200 NVL", 417.5 * TFLOP, 835.5 * TFLOP),
    ("H100", 494.7 * TFLOP, 989.4 * TFLOP),
    ("H200", 494.7 * TFLOP, 989.4 * TFLOP),
)


def _cpuinfo_fields(cpuinfo_path: str) -> dict:
    """The first processor's model name, cpu family, model, cpu MHz and flags from /proc/cpuinfo
    ({} where it cannot be read)."""
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return {}
    fields = {}
    for key, value in re.findall(r"^(model name|cpu family|model|cpu MHz|flags)\s*:\s*(.*)$", text, re.MULTILINE):
        fields.setdefault(key, value.strip())
    return fields


def cpu_peak_flops(cpuinfo_path: str = "/proc/cpuinfo", cores: int | None = None) -> float | None:
    """cores x clock x FLOPs/cycle from /proc/cpuinfo (None where it cannot be read)."""
    fields = _cpuinfo_fields(cpuinfo_path)
    if "cpu MHz" not in fields or "flags" not in fields:
        return None
    flags = fields["flags"].split()
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 8
    cores = cores or len(os.sched_getaffinity(0))
    return cores * float(fields["cpu MHz"]) * 1e6 * per_cycle


def host_info(cpuinfo_path: str = "/proc/cpuinfo", meminfo_path: str = "/proc/meminfo") -> dict:
    """The host a figure was measured on, for run records and benchmark JSON. A CPU's model name alone
    does not name it: two 2-core "AMD EPYC" machines this project measured on, one with AVX-512 and
    one without, ran the same update 1.8x apart (docs/BENCHMARKS.md). Fields that cannot be read are
    None; `cpus` is what this process may run on."""
    cpus = len(os.sched_getaffinity(0))
    info = dict(cpu_model=None, cpu_family_model=None, vector_isa=None, cpus=cpus, memory_gib=None)
    fields = _cpuinfo_fields(cpuinfo_path)
    info["cpu_model"] = fields.get("model name")
    if "cpu family" in fields and "model" in fields:
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields['model']}"
    if "flags" in fields:
        flags = fields["flags"].split()
        info["vector_isa"] = next((isa for isa in ("avx512f", "avx2", "avx", "sse2") if isa in flags), "none")
    try:
        with open(meminfo_path) as f:
            total = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.MULTILINE)
        if total:
            info["memory_gib"] = round(int(total.group(1)) / 2**20, 1)
    except OSError:
        pass
    return info


def peak_flops(device, compute_dtype: str = "float32") -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for a jax Device; (None, reason) for devices not in the table."""
    bf16 = compute_dtype == "bfloat16"
    if device.platform == "cpu":
        peak = cpu_peak_flops()
        return peak, "cores x clock x FLOPs/cycle from /proc/cpuinfo (estimate)"
    kind = getattr(device, "device_kind", "")
    for name, fp32, bf16_peak in GPU_PEAKS:
        if name in kind:
            return (bf16_peak if bf16 else fp32), f"{name} datasheet, dense {'bf16' if bf16 else 'TF32'}"
    return None, f"no peak known for {kind!r} (add it to psrl_jax/perf.py)"
