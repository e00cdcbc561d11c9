"""What the machine can do: bfloat16 units, and memory to spare."""

import os
from typing import Optional

import tensorflow as tf


def bfloat16_units() -> Optional[str]:
    """The device that computes bfloat16 natively (a GPU of compute capability 8 or more, or a
    CPU with AVX512-BF16 or AMX-BF16), or None: there Keras' mixed precision is emulated."""
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (8, 0):
            return f"GPU {gpu.name} (compute capability {capability[0]}.{capability[1]})"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"CPU with {' and '.join(found)}" if found else None


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
