"""What produced a run: the code's git commit, the library versions, the device, the command line."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT


def code_versions() -> Dict[str, str]:
    """The code, library versions and device a run's result depends on (TensorFlow's op
    determinism promises the same bits on the same hardware only)."""
    import keras
    import tensorflow as tf

    from filterviz.core.hardware import describe_device

    commit, dirty = _git_state(Path(__file__).resolve().parent)
    return {
        "git.commit": commit,
        "git.dirty": dirty,
        "versions.tensorflow": tf.__version__,
        "versions.keras": keras.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.python": sys.version.split()[0],
        "device": describe_device(),
    }


def provenance_tags(command: str) -> Dict[str, str]:
    """What produced a run: code_versions(), the command line and its working directory."""
    versions = code_versions()
    commit = versions["git.commit"]
    tags = {
        **versions,
        "command": command,
        "cwd": os.getcwd(),  # relative paths in the overrides are relative to it
    }
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit  # shown by the MLflow UI
    return tags


def _git_state(source_dir: Path) -> Tuple[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source_dir), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(dirty).lower()

