"""Ready for the GPU, checked on the CPU: what decides the device, how parallel jobs share GPUs,
and what a user is told when a GPU goes unused. (The device line and tag: test_cli.py; the
device warning of reproduce: test_sweep.py; the Hermitian Fourier parameter: test_techniques.py;
the XLA fallback: test_xla.py.)"""

import os
import subprocess
import sys

from filterviz.core.hardware import Gpu, describe_device, fastest_precision, gpu_for_job, gpu_problem, gpus, \
    xla_is_faster

H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0))
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def test_the_device_is_the_first_gpu_tensorflow_sees_else_the_cpu_with_the_flags_that_decide_defaults():
    assert describe_device([H100]) == "GPU NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    assert describe_device([H100, H100]).endswith("(and 1 more GPU(s))")
    cpu = describe_device([], ["fpu", "avx2", "avx512f", "amx_bf16", "sse4_2"])
    assert cpu.startswith("CPU ") and cpu.endswith(" core(s), avx2 avx512f amx_bf16")
    # here: TensorFlow's own list decides, and it sees no GPU
    import tensorflow as tf
    assert gpus() == [] == tf.config.list_physical_devices("GPU") and describe_device().startswith("CPU ")


def test_hardware_defaults_count_the_gpus_tensorflow_sees():
    # bfloat16 and XLA were measured on CPUs only: a GPU TensorFlow sees keeps float32 and the plain graph
    assert fastest_precision("vgg16", ["avx512_bf16"], gpus=0) == "bfloat16"
    assert fastest_precision("vgg16", ["avx512_bf16"], gpus=1) == "float32"
    assert xla_is_faster(["avx2"], gpus=0) and not xla_is_faster(["avx2"], gpus=1)


def test_a_gpu_the_driver_has_and_tensorflow_does_not_see_is_one_line_saying_what_to_do():
    assert gpu_problem(driver_gpus=0, visible=[]) is None, "no GPU: nothing to say"
    assert gpu_problem(driver_gpus=1, visible=[H100]) is None, "used: nothing to say"
    missing = gpu_problem(driver_gpus=2, visible=[], cuda_libraries=False, environ={})
    assert missing.startswith("this machine has 2 NVIDIA GPU(s) but TensorFlow's CUDA libraries are not installed")
    assert 'pip install -e ".[gpu]"' in missing and "\n" not in missing
    hidden = gpu_problem(driver_gpus=1, visible=[], cuda_libraries=True, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert "CUDA_VISIBLE_DEVICES='' hides them" in hidden
    other = gpu_problem(driver_gpus=1, visible=[], cuda_libraries=True, environ={})
    assert "nvidia-smi" in other and "TF_CPP_MIN_LOG_LEVEL=0" in other
    # this machine, as it is: no driver, so no warning
    if not os.path.isdir("/proc/driver/nvidia"):
        assert gpu_problem() is None


def test_parallel_local_jobs_spread_over_the_gpus_and_cluster_or_in_process_jobs_are_left_alone():
    four = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert [gpu_for_job(n, JOBLIB, four) for n in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert [gpu_for_job(n, SUBMITIT_LOCAL, {"CUDA_VISIBLE_DEVICES": "5,7"}) for n in range(3)] == ["5", "7", "5"]
    # without CUDA_VISIBLE_DEVICES, the driver's GPUs
    assert [gpu_for_job(n, JOBLIB, {}, driver_gpus=2) for n in range(3)] == ["0", "1", "0"]
    # one GPU, none, or a launcher that runs one job at a time or that SLURM gives its own GPUs
    assert gpu_for_job(3, JOBLIB, {"CUDA_VISIBLE_DEVICES": "2"}) is None
    assert gpu_for_job(3, JOBLIB, {}, driver_gpus=0) is None
    assert gpu_for_job(3, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", four) is None
    assert gpu_for_job(3, "hydra_plugins.filterviz_slurm.slurm_launcher.ReportingSlurmLauncher", four) is None


def test_every_filterviz_process_takes_gpu_memory_as_it_needs_it_unless_the_user_said_otherwise():
    ask = [sys.executable, "-c", "import os, filterviz; print(os.environ['TF_FORCE_GPU_ALLOW_GROWTH'])"]
    env = {k: v for k, v in os.environ.items() if k != "TF_FORCE_GPU_ALLOW_GROWTH"}
    assert subprocess.run(ask, env=env, capture_output=True, text=True, check=True).stdout.strip() == "true"
    own = {**env, "TF_FORCE_GPU_ALLOW_GROWTH": "false"}
    assert subprocess.run(ask, env=own, capture_output=True, text=True, check=True).stdout.strip() == "false"
