"""Run folders that survive a kill at any point.

A run folder (``<runs_dir>/<table>/<arch>/<dataset>/<name>``) holds one ``version_N`` per fit,
validate or test, and the stage's exported ``best.ckpt`` (+ ``best.json``). The rules:

- Every file is written beside its destination as ``<name>.part`` and renamed over it when
  complete (:func:`write_atomically`, :class:`AtomicCheckpointIO`): a reader finds the previous
  complete file or the new complete one, never a torn one.
- A process holds an exclusive ``flock`` on ``version_N/.lock`` while it runs
  (:func:`reserve_version`); the lock dies with the process however it ends.
- When the next run of the folder starts, :func:`sweep` removes what dead runs left: their
  ``*.part`` files, and version folders that never got a checkpoint. Folders of live runs are
  left alone, so fits started together into one folder do not disturb each other.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["write_atomically", "AtomicCheckpointIO", "reserve_version", "sweep", "last_checkpoint", "run_dir",
           "LOCK_NAME"]

LOCK_NAME = ".lock"
# the part files of exported checkpoints: best.ckpt / best.json, named after their fit's version (or not, as
# older gradfilt wrote them); no other part file in a run folder is gradfilt's to remove
_EXPORT_PART = re.compile(r"best\.(?:ckpt|json)(?:\.(version_\d+))?\.part")


def run_dir(runs_dir: str, table: str, arch: str, dataset: str, name: str) -> Path:
    """``<runs_dir>/<table>/<arch>/<dataset>/<name>``, the folder of one method's runs.

    Raises:
        ValueError: ``table`` or ``name`` is not one plain folder name, or ``arch`` / ``dataset`` would lead
            outside ``runs_dir`` (absolute, ``..``): a run folder always lies inside ``runs_dir``.
    """
    for key, value, parts in (("table", table, 1), ("run_name", name, 1), ("arch", arch, None),
                              ("dataset", dataset, 1)):
        pieces = str(value).replace("\\", "/").split("/")
        if (not str(value) or Path(str(value)).is_absolute() or any(p in ("", ".", "..") for p in pieces)
                or parts is not None and len(pieces) > parts):
            raise ValueError(f"{key} {value!r} is not a valid folder name under the runs folder: give one name "
                             f"without '/', '\\', '.' or '..'" + (" (an arch may be timm/<name>)" if parts is None
                                                                    else ""))
    return Path(runs_dir) / table / arch / dataset / name


def write_atomically(path: Path, write: Callable[[Any], None], part: Optional[Path] = None) -> None:
    """Write ``path`` through ``write(binary file)`` into a part file, flush it to disk, then rename.

    Args:
        path: destination.
        write: called with the open part file.
        part: the part file's name (default ``<path>.part``); removed if anything fails.
    """
    path = Path(path)
    part = Path(part) if part is not None else path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing each checkpoint as ``<file>.part`` renamed when complete
    (Lightning's own save goes through a temporary file elsewhere, which a kill leaves behind and a
    rename across file systems does not make atomic)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(Path(path), lambda f: torch.save(checkpoint, f))


def _live(version: Path) -> bool:
    """Whether a running process holds ``version/.lock`` (a dead holder's lock is free)."""
    try:
        fd = os.open(version / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def sweep(folder: Path) -> list[Path]:
    """Remove what dead runs of a run folder left behind; returns the removed paths.

    Removed: ``*.part`` files of dead runs (in their version folders, and the exported checkpoint's
    ``best.ckpt`` / ``best.json`` parts named after their version), version folders of dead runs that
    hold no checkpoint, and the lock files of dead runs that do (their checkpoints stay, to resume
    from). A version
    folder without a lock file (made by an older gradfilt, or by Lightning for another rank) is
    only swept of its parts.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    dead = {}
    for version in sorted(folder.glob("version_*")):
        if version.is_dir():
            dead[version.name] = not _live(version)
    for part in folder.glob("*.part"):
        match = _EXPORT_PART.fullmatch(part.name)
        if match is not None and dead.get(match.group(1), True):
            part.unlink(missing_ok=True)
            removed.append(part)
    for name, is_dead in dead.items():
        version = folder / name
        if not is_dead:
            continue
        for part in version.rglob("*.part"):
            part.unlink(missing_ok=True)
            removed.append(part)
        if not (version / LOCK_NAME).exists():
            continue
        if any(version.glob("checkpoints/*.ckpt")):  # a killed fit's checkpoints stay (resume from them)
            (version / LOCK_NAME).unlink(missing_ok=True)
        else:
            shutil.rmtree(version, ignore_errors=True)
            removed.append(version)
    return removed


def reserve_version(folder: Path) -> tuple[int, int]:
    """Create ``folder/version_N`` (the first free N, atomically) and lock it for this process.

    Returns:
        (N, fd of the held lock); the lock is released by closing the fd or by the process ending.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        version = folder / f"version_{n}"
        try:
            version.mkdir()
            break
        except FileExistsError:
            n += 1
    # lock a private file first, then give it its public name: a sweep never sees an unlocked new lock
    private = version / f"{LOCK_NAME}.{os.getpid()}"
    fd = os.open(private, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(private, version / LOCK_NAME)
    return n, fd


def release_version(version: Path, fd: int) -> None:
    """Drop a version folder's lock (its folder is kept)."""
    (Path(version) / LOCK_NAME).unlink(missing_ok=True)
    os.close(fd)


def last_checkpoint(folder: Path) -> Path:
    """The newest ``last*.ckpt`` of a run folder's versions (``--ckpt_path last``).

    Args:
        folder: ``<runs_dir>/<table>/<arch>/<dataset>/<method tag or run name>``.

    Raises:
        FileNotFoundError listing what the folder holds when no version has a last checkpoint.
    """
    found = sorted(Path(folder).glob("version_*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    held = sorted(str(p.relative_to(folder)) for p in Path(folder).glob("**/*")
                  if p.is_file() and p.name != LOCK_NAME) if Path(folder).is_dir() else []
    raise FileNotFoundError(
        f"--ckpt_path last: no last checkpoint (version_*/checkpoints/last*.ckpt) under {folder}; it holds "
        f"{held or 'nothing'}. Give the checkpoint's path instead, or check --runs_dir / --table / --run_name")
