"""Output folders checked before a run starts, so that a folder that cannot hold the results
never costs their computation (light: the command checks before Hydra, and before TensorFlow)."""

import os
from pathlib import Path

from filterviz.errors import ConfigError


def usable_folder(folder: Path, what: str, key: str = "hydra.run.dir") -> Path:
    """`folder` made (with its parents) and writable, or one line saying why not and what to do:
    before a run starts, so a folder that cannot hold its results never costs its computation."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"{part} is a file, where {what} {folder} would go: move it, or choose another "
                              f"folder ({key}=...)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".filterviz-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write {what} {folder} ({e.strerror}): choose a writable folder "
                          f"({key}=...)") from None
    return folder


def output_problem(argv) -> str:
    """What is wrong with the folder Hydra would make for this command line (`hydra.run.dir`, or
    `hydra.sweep.dir` for -m; as far as it is fixed before its `${now:...}` parts), or ''."""
    multirun = bool({"-m", "--multirun"} & set(argv)) or any(a == "hydra.mode=MULTIRUN" for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    folder = given[-1] if given else ("multirun" if multirun else "outputs")
    fixed = folder.split("${", 1)[0]
    if not fixed.strip("/"):
        return ""
    # the folder itself when fixed, else the last folder before the date and time parts
    target = Path(fixed) if fixed == folder or fixed.endswith("/") else Path(fixed).parent
    try:
        usable_folder(target, "the output folder", key)
    except ConfigError as e:
        return str(e)
    return ""
