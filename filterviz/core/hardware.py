"""What the machine can do, as TensorFlow sees it: the device a run computes on, bfloat16 units, a
faster step under XLA or in bfloat16, and memory to spare; and how parallel jobs share GPUs.

CPU facts come from /proc (no TensorFlow needed); GPU facts from TensorFlow's own device list,
never from the driver alone: a machine can have an NVIDIA driver and a TensorFlow without CUDA.
"""

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute in bfloat16
SHOWN_FLAGS = ("avx2", "avx512f", *BF16_FLAGS)  # the flags that decide our defaults, in the device line
# Launchers that run several jobs as processes of this machine: their jobs are spread over its GPUs.
# (SLURM gives each job its own GPUs; the in-process launcher runs one job at a time.)
LOCAL_PARALLEL_LAUNCHERS = ("JoblibLauncher", "LocalLauncher")


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple  # CUDA compute capability, (9, 0) for an H100

    def __str__(self) -> str:
        return f"GPU {self.name} (compute capability {self.capability[0]}.{self.capability[1]})"


def cpu_flags() -> List[str]:
    return _cpuinfo("flags").split()


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":")[0].strip() == field), "")
    except OSError:
        return ""


def import_tensorflow_quietly() -> None:
    """TensorFlow 2.21 prints C++ start-up lines on stderr whatever TF_CPP_MIN_LOG_LEVEL says."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def gpus() -> List[Gpu]:
    """The GPUs TensorFlow sees (CUDA_VISIBLE_DEVICES applied), in its order: GPU:0 first."""
    import_tensorflow_quietly()  # a config's defaults can ask before the command has imported it
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        found.append(Gpu(details.get("device_name", device.name), tuple(details.get("compute_capability", (0, 0)))))
    return found


def usable_cores() -> int:
    """The cores this process may run on (a SLURM job's or a container's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe_device(visible: Optional[Sequence[Gpu]] = None, flags: Optional[List[str]] = None) -> str:
    """The device a run computes on, for the console and the run's record: TensorFlow places the
    ascent on its first GPU when it sees one, else on the CPU."""
    visible = gpus() if visible is None else visible
    if visible:
        more = f" (and {len(visible) - 1} more GPU(s))" if len(visible) > 1 else ""
        return f"{visible[0]}{more}"
    flags = cpu_flags() if flags is None else flags
    shown = [flag for flag in SHOWN_FLAGS if flag in flags]
    return f"CPU {_cpuinfo('model name') or 'unknown'}, {usable_cores()} core(s), {' '.join(shown) or 'no AVX2'}"


def gpu_problem(driver_gpus: Optional[int] = None, visible: Optional[Sequence[Gpu]] = None,
                cuda_libraries: Optional[bool] = None, environ=os.environ) -> Optional[str]:
    """Why NVIDIA GPUs that the driver reports are unused, and what to do; None when TensorFlow sees
    one or there is none. `cuda_libraries`: whether TensorFlow's CUDA wheels (its `and-cuda`
    extra: cuDNN and the rest) are installed; without them pip's TensorFlow runs on the CPU."""
    driver_gpus = _driver_gpus() if driver_gpus is None else driver_gpus
    if not driver_gpus or (gpus() if visible is None else visible):
        return None
    hidden = environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"this machine has {driver_gpus} NVIDIA GPU(s) but CUDA_VISIBLE_DEVICES={hidden!r} hides them"
    if cuda_libraries is None:
        import importlib.util

        cuda_libraries = importlib.util.find_spec("nvidia.cudnn") is not None
    if not cuda_libraries:
        return (f"this machine has {driver_gpus} NVIDIA GPU(s) but TensorFlow's CUDA libraries are not installed, "
                "so it computes on the CPU: python -m pip install -e \".[gpu]\" (tensorflow[and-cuda])")
    return (f"this machine has {driver_gpus} NVIDIA GPU(s) but TensorFlow cannot use them: check the driver "
            "against TensorFlow's CUDA version (nvidia-smi), and run with TF_CPP_MIN_LOG_LEVEL=0 to see its reason")


def _driver_gpus() -> int:
    return len(list(Path("/proc/driver/nvidia/gpus").glob("*")))


@lru_cache(maxsize=None)
def _gpu_count() -> int:
    """GPUs TensorFlow sees. Without an NVIDIA driver it can see none, and is not asked: a config's
    defaults resolve while Hydra composes, before a command needs TensorFlow (a bad setting's
    one line would otherwise wait for its import)."""
    return len(gpus()) if _driver_gpus() else 0


def bfloat16_units() -> Optional[str]:
    """The device that computes bfloat16 natively (a GPU of compute capability 8 or more, or a
    CPU with AVX512-BF16 or AMX-BF16), or None: there Keras' mixed precision is emulated."""
    for gpu in gpus():
        if gpu.capability >= (8, 0):
            return str(gpu)
    found = [flag for flag in BF16_FLAGS if flag in cpu_flags()]
    return f"CPU with {' and '.join(found)}" if found else None


def xla_is_faster(flags: Optional[List[str]] = None, gpus: Optional[int] = None) -> bool:
    """Whether the XLA-compiled ascent step beats the plain graph here, as measured side by side
    (experiments/benchmark.py, docs/speed.md): 1.3x on a CPU without AVX-512, where TensorFlow's
    oneDNN kernels are slower than XLA's code; 0.8x on one with AVX-512, where they are faster.
    Not measured on a GPU: there the plain graph, the path everyone else runs. `gpus`: how many
    TensorFlow sees (by default, asked)."""
    gpus = _gpu_count() if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    return gpus == 0 and bool(flags) and "avx512f" not in flags


def fastest_precision(model: str = "vgg16", flags: Optional[List[str]] = None, gpus: Optional[int] = None) -> str:
    """bfloat16 where it was measured faster with pictures as good (experiments/benchmark.py and
    experiments/presets.py, docs/speed.md): a CPU that computes in bfloat16 (AVX512-BF16 or
    AMX-BF16), 1.7x on the 2-CPU EPYC with the same quality figures. float32 elsewhere: emulated
    bfloat16 is several times slower; a GPU TensorFlow sees is unmeasured; a saved model (model=file) keeps its own."""
    gpus = _gpu_count() if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    native = any(flag in flags for flag in BF16_FLAGS)
    return "bfloat16" if native and gpus == 0 and model != "file" else "float32"


def share_gpus() -> None:
    """GPU memory taken as it is needed, not nearly all of it at start (TensorFlow's default), so
    that parallel jobs can share a GPU; read by TensorFlow when it first uses a GPU. A user's own
    TF_FORCE_GPU_ALLOW_GROWTH wins."""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def keep_xla_compilations(environ=os.environ) -> Optional[Path]:
    """XLA's compilations of the step's fused operations kept on disk (TensorFlow's persistent cache),
    so that a job does not compile what an earlier job or process compiled for the same shapes: 0.5 s
    of each atlas job's start on a 2-core CPU. In $XDG_CACHE_HOME/filterviz/xla (~/.cache/...), where
    it can be written (an unwritable one makes every compile fail); read by TensorFlow when it first
    compiles. A persistent cache the user named in TF_XLA_FLAGS wins."""
    flags = environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in flags:
        return None
    folder = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "filterviz" / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={folder}".strip()
    return folder


def gpu_for_job(job_number: int, launcher: str, environ=os.environ, driver_gpus: Optional[int] = None) -> Optional[str]:
    """The GPU (a CUDA_VISIBLE_DEVICES entry) a sweep's job number `job_number` should run on, so
    that the parallel jobs of a local launcher (`launcher`: its class name) spread over a node's
    GPUs instead of all landing on the first; None to leave the job as it is. Read before
    TensorFlow first touches a GPU: from CUDA_VISIBLE_DEVICES when it is set, else the driver's list."""
    if not launcher.endswith(LOCAL_PARALLEL_LAUNCHERS):
        return None
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        visible = [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    else:
        visible = [str(i) for i in range(_driver_gpus() if driver_gpus is None else driver_gpus)]
    return visible[job_number % len(visible)] if len(visible) > 1 else None


def keep_off_gpus() -> None:
    """This process plans and waits while other processes compute: it must not hold GPU memory.
    Only before TensorFlow first uses a GPU; the device list (gpus()) still shows them."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        tf.config.set_visible_devices([], "GPU")


def available_memory() -> int:
    """Bytes a batch can get: on a GPU TensorFlow will compute on, what its allocator may use of
    the first one; else the host's available memory (MemAvailable), else its physical total."""
    if _gpu_count():
        from tensorflow.python.client import device_lib  # the only API that reports a GPU's memory

        limits = [d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU"]
        if limits:
            return int(limits[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
