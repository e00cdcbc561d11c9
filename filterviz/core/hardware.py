"""What the machine can do: bfloat16 units, a faster step under XLA or in bfloat16, and memory to spare.
Read without TensorFlow where it can be, so that Hydra can ask before TensorFlow is imported."""

import os
from pathlib import Path
from typing import List, Optional

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute in bfloat16


def cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def bfloat16_units() -> Optional[str]:
    """The device that computes bfloat16 natively (a GPU of compute capability 8 or more, or a
    CPU with AVX512-BF16 or AMX-BF16), or None: there Keras' mixed precision is emulated."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (8, 0):
            return f"GPU {gpu.name} (compute capability {capability[0]}.{capability[1]})"
    found = [flag for flag in BF16_FLAGS if flag in cpu_flags()]
    return f"CPU with {' and '.join(found)}" if found else None


def xla_is_faster(flags: Optional[List[str]] = None, gpus: Optional[int] = None) -> bool:
    """Whether the XLA-compiled ascent step beats the plain graph here, as measured side by side
    (experiments/benchmark.py, docs/speed.md): 1.3x on a CPU without AVX-512, where TensorFlow's
    oneDNN kernels are slower than XLA's code; 0.8x on one with AVX-512, where they are faster.
    Not measured on a GPU: there the plain graph, the path everyone else runs."""
    gpus = _nvidia_gpus() if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    return gpus == 0 and bool(flags) and "avx512f" not in flags


def fastest_precision(model: str = "vgg16", flags: Optional[List[str]] = None, gpus: Optional[int] = None) -> str:
    """bfloat16 where it was measured faster with pictures as good (experiments/benchmark.py and
    experiments/presets.py, docs/speed.md): a CPU that computes in bfloat16 (AVX512-BF16 or
    AMX-BF16), 1.7x on the 2-CPU EPYC with the same quality figures. float32 elsewhere: emulated
    bfloat16 is several times slower; a GPU is unmeasured; a saved model (model=file) keeps its own."""
    gpus = _nvidia_gpus() if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    native = any(flag in flags for flag in BF16_FLAGS)
    return "bfloat16" if native and gpus == 0 and model != "file" else "float32"


def _nvidia_gpus() -> int:
    return len(list(Path("/proc/driver/nvidia/gpus").glob("*")))


def available_memory() -> int:
    """Bytes of memory a new allocation can get now (MemAvailable), else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
