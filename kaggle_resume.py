"""Find, check, choose and resume PyTorch checkpoints across Kaggle sessions.

A Kaggle session is killed at 12 hours (9 on TPU). This module finds every
checkpoint in the writable /kaggle/working and in the read-only inputs (every
mount layout Kaggle has used), checks each one with weights_only loading,
picks one by source priority, epoch or a metric, copies it to the writable
folder and restores model, optimizer, scheduler, scaler, RNG states and
history, so the next session starts at epoch N+1::

    from kaggle_resume import resume, save_checkpoint

    state = resume(model, optimizer)
    for epoch in range(state.start_epoch, EPOCHS):
        ...
        save_checkpoint(model=model, optimizer=optimizer, epoch=epoch)

It also reads Lightning .ckpt files and Hugging Face Trainer checkpoint
folders, times the session (SessionClock) and prepares the output for upload
as a dataset (publish). One file, no dependency beyond torch: attach it as a
Kaggle utility script, fetch it with wget, or vendor it. ``python
kaggle_resume.py --help`` shows the command line (scan, demo, publish).
MIT licence.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import fnmatch
import functools
import glob
import html
import importlib
import json
import logging
import math
import numbers
import os
import pickle
import random
import re
import secrets
import shlex
import shutil
import stat
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ACCURACY_ALIASES",
    "CandidateList",
    "CheckpointInfo",
    "DEFAULT_PATTERNS",
    "ResumeState",
    "SOURCES",
    "SessionClock",
    "copy_checkpoint_to_working",
    "find_best_checkpoint_across_sources",
    "find_checkpoint_locations",
    "get_checkpoint_info",
    "publish",
    "resume",
    "save_checkpoint",
]
__version__ = "0.1.0"

_log = logging.getLogger("kaggle_resume")
_log.addHandler(logging.NullHandler())  # silent unless the user configures logging


class _PathsAsText(logging.Filter):
    """Log paths as plain quoted text, whatever bytes their names hold."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _show(arg) if isinstance(arg, Path) else arg for arg in record.args
            )
        return True


_log.addFilter(_PathsAsText())


# --- Constants -------------------------------------------------------------

#: Where a checkpoint can come from, in priority order (index = priority).
SOURCES: tuple[str, ...] = ("working", "input_datasets", "notebook_outputs", "models")
_PRIORITY = {source: number for number, source in enumerate(SOURCES)}
_EXTERNAL = "external"  # a path outside root/working and root/input
_EXTRA = "extra"  # a folder named by extra_sources or $KAGGLE_RESUME_SOURCES

#: File names searched when no pattern is given.
DEFAULT_PATTERNS: tuple[str, ...] = ("*.pth", "*.pt", "*.ckpt")

#: Keys read as the accuracy when a checkpoint has no "accuracy" key.
ACCURACY_ALIASES: tuple[str, ...] = (
    "acc",
    "val_accuracy",
    "val_acc",
    "best_accuracy",
    "eval_accuracy",
)

_MODEL_KEYS = ("model_state_dict", "state_dict", "model")
_STEP_KEYS = ("step", "global_step")
_NOT_METRICS = frozenset({"epoch", "step", "global_step", "format_version"})
_LOWER_IS_BETTER = ("loss", "error", "perplexity")
_LATEST = ("epoch", "latest")

_FORMAT_VERSION = 1
_META_NAME = "kaggle_resume.json"  # a small record inside the checkpoint's zip

# Discovery bounds: folder levels below a dataset root, and entries read from
# one folder before it counts as a data folder (300,000 images cost little).
_MAX_DEPTH = 4
_MAX_ENTRIES = 5000
_DATA_RUN = 256  # files in a row that are no checkpoints: a data folder
_LEAF_RUN = 64  # the same in a folder without subfolders
_DATA_FOLDER_BYTES = 256 * 1024  # a folder this big (ext4: ~9,000 names) is data
_CHECKPOINT_FOLDERS = ("checkpoints", "checkpoint", "ckpt", "ckpts")

# Folder levels between a layout folder under input/ and a dataset root.
_LAYOUTS = {
    "datasets": ("input_datasets", 2),  # datasets/<owner>/<slug>
    "d": ("input_datasets", 2),  # d/<owner>/<slug>, the old collision layout
    "notebooks": ("notebook_outputs", 2),  # notebooks/<owner>/<slug>
    "models": ("models", 5),  # models/<owner>/<model>/<framework>/<var>/<ver>
}
_SKIPPED_LAYOUTS = frozenset({"competitions"})
_HF_FOLDER = re.compile(r"checkpoint-\d+")  # a Hugging Face Trainer checkpoint
_BACKUP = re.compile(r"\.bak-\d{8}-\d{6}(?:-\d+)?$")  # what a copy displaced
_VERSION = re.compile(r"[/\\]versions[/\\](\d+)(?:[/\\]|$)")  # kagglehub's cache

_TEMP_SUFFIX = ".partial"
_PROGRESS_BYTES = 256 * 1000**2  # copies bigger than this show progress
_SEND_BYTES = 64 * 1024**2
_BUDGET_BYTES = 20 * 1000**3  # Kaggle keeps at most 20 GB of /kaggle/working
# Names that run code: a checkpoint that calls them is hostile.
_CODE_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "runpy",
        "importlib",
        "pty",
        "code",
        "pickle",
        "marshal",
        "webbrowser",
        "ctypes",
    }
)
_CODE_BUILTINS = frozenset(
    {"eval", "exec", "compile", "open", "getattr", "setattr", "delattr"}
    | {"__import__", "globals", "locals", "vars", "input", "breakpoint"}
)
_CHUNK = 1 << 20

# What this torch supports, detected once.
try:
    from torch.nn.parallel import DistributedDataParallel as _DDP
except ImportError:  # a torch built without distributed support
    _WRAPPERS: tuple[type, ...] = (torch.nn.DataParallel,)
else:
    _WRAPPERS = (torch.nn.DataParallel, _DDP)


@functools.lru_cache(maxsize=1)
def _numpy_globals() -> tuple[Any, ...]:
    """The numpy names a checkpoint with numpy scalars needs, where numpy exists."""
    try:
        import numpy as np
    except ImportError:
        return ()
    allowed: list[Any] = [np.dtype]
    try:  # numpy 2
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    # Files written under numpy 1 name the reconstructor by its old module.
    allowed.append((scalar, "numpy.core.multiarray.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.extend(
            getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")
        )
    return tuple(allowed)


# --- Roots and sources -----------------------------------------------------


def _root(root: str | os.PathLike[str] | None) -> Path:
    """The Kaggle root: the argument, else $KAGGLE_RESUME_ROOT, else /kaggle."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("KAGGLE_RESUME_ROOT") or "/kaggle")


def _is_under(path: Path, folder: Path) -> bool:
    path_text = os.path.abspath(path)
    folder_text = os.path.abspath(folder)
    return path_text == folder_text or path_text.startswith(folder_text + os.sep)


def _source_of(path: Path, root: Path) -> str:
    """The source a path belongs to, from where it lies under root."""
    if _is_under(path, root / "working"):
        return "working"
    inputs = root / "input"
    if not _is_under(path, inputs):
        return _EXTERNAL
    parts = Path(os.path.abspath(path)).relative_to(os.path.abspath(inputs)).parts
    layout = parts[0] if len(parts) > 1 else ""
    if layout in _LAYOUTS:
        return _LAYOUTS[layout][0]
    return "input_datasets"


def _priority_of(source: str) -> int:
    return _PRIORITY.get(source, len(SOURCES))


def _show(path: os.PathLike[str] | str) -> str:
    """A path as printable text, whatever bytes its name holds."""
    return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


# --- Discovery -------------------------------------------------------------


def _matcher(patterns: str | Sequence[str] | None) -> Callable[[str], object]:
    if patterns is None:
        chosen: Sequence[str] = DEFAULT_PATTERNS
    elif isinstance(patterns, str):
        chosen = (patterns,)
    else:
        chosen = tuple(patterns)
    joined = "|".join(fnmatch.translate(pattern) for pattern in chosen)
    return re.compile(joined, re.IGNORECASE).match


def _is_checkpoint_folder(name: str) -> bool:
    lowered = name.lower()
    return "checkpoint" in lowered or "ckpt" in lowered


def _walk(
    top: Path,
    match: Callable[[str], object],
    max_depth: int,
    seen: set[tuple[int, int]],
    folders: bool = True,
    anywhere: bool = True,
    roots: int = 0,
) -> Iterator[Path]:
    """Yield the paths under top whose names match, at most max_depth levels down.

    Hidden entries are skipped, a folder reached twice (a symlink loop) is
    read once, and an unreadable folder or odd entry costs a debug line. With
    folders=True a Hugging Face checkpoint-<step> folder is yielded too. With
    anywhere=False a file counts only directly in top or inside a folder
    named like a checkpoint folder (checkpoints/, lightning_logs/.../ckpt/).

    A data folder is not read through: below the dataset roots (`roots`
    levels down), a folder without subfolders whose size says it holds
    thousands of names is skipped, and a folder whose listing shows a run of
    files that are no checkpoints (64 in a folder without subfolders, 256 in
    one with some) stops there; only its checkpoints/ (or checkpoint, ckpt,
    ckpts) subfolder is still searched.
    """
    stack = [(top, 0, anywhere)]
    while stack:
        folder, depth, inside = stack.pop()
        inside = inside or _is_checkpoint_folder(folder.name)
        try:
            info = folder.stat()
        except OSError as e:
            _log.debug("Skipping %r: %s", folder, e)
            continue
        if (info.st_dev, info.st_ino) in seen:
            _log.debug("Skipping %r: already searched (a symlink loop?)", folder)
            continue
        seen.add((info.st_dev, info.st_ino))

        found: list[Path] = []
        subfolders: list[Path] = []
        checkpointish = _is_checkpoint_folder(folder.name)
        limit = None if checkpointish else _MAX_ENTRIES
        data_run = None
        if depth > roots and not checkpointish:
            # A folder's link count is 2 + its subfolders on most Linux file
            # systems: with none, a short run of data files is enough to stop,
            # and a folder as big as thousands of names is not read at all.
            leaf = info.st_nlink == 2
            if leaf and info.st_size > _DATA_FOLDER_BYTES:
                _log.debug(
                    "Not reading %r: a data folder of %d bytes", folder, info.st_size
                )
                continue
            data_run = _LEAF_RUN if leaf else _DATA_RUN
        run = 0  # files in a row that are no checkpoints
        stopped = False
        try:
            with os.scandir(folder) as entries:
                for count, entry in enumerate(entries):
                    if limit is not None and count >= limit or run == data_run:
                        _log.debug(
                            "Stopped reading %r after %d entries: a data folder; "
                            "keep checkpoints in a checkpoints/ folder",
                            folder,
                            count,
                        )
                        stopped = True
                        break
                    if entry.name.startswith(".") or _BACKUP.search(entry.name):
                        continue  # hidden, a temporary file, or a kept backup
                    try:
                        if match(entry.name):
                            run = 0
                            hf = _HF_FOLDER.fullmatch(entry.name) and entry.is_dir()
                            if inside or depth == 0 or hf:
                                found.append(Path(entry.path))
                        elif not entry.is_dir():
                            run += 1
                            continue
                        elif folders and _HF_FOLDER.fullmatch(entry.name):
                            found.append(Path(entry.path))
                        elif depth < max_depth:
                            subfolders.append(Path(entry.path))
                    except OSError as e:
                        _log.debug("Skipping %r: %s", entry.path, e)
        except OSError as e:
            _log.debug("Cannot read folder %r: %s", folder, e)
        if stopped and depth < max_depth:
            for name in _CHECKPOINT_FOLDERS:
                if (folder / name).is_dir() and folder / name not in subfolders:
                    subfolders.append(folder / name)

        yield from sorted(found)
        below = sorted(subfolders, reverse=True)
        stack.extend((sub, depth + 1, inside) for sub in below)


def _search_plan(
    root: Path, extra: Sequence[tuple[Path, int]] = ()
) -> list[tuple[str, int, Path, int]]:
    """The folders to search: (source, priority, folder, roots), best first.

    roots is how many levels below the folder the dataset roots lie; the
    search goes _MAX_DEPTH levels below them (one more in working).
    """
    # Working: its own files, and checkpoint folders up to 5 levels down
    # (checkpoints/, lightning_logs/version_0/checkpoints/, results/checkpoint-500/).
    plan = [("working", 0, root / "working", 0)]
    plan += [(_EXTRA, priority, folder, 0) for folder, priority in extra]
    inputs = root / "input"
    try:
        entries = sorted(os.scandir(inputs), key=lambda entry: entry.name)
    except OSError as e:
        _log.debug("No inputs searched in %r: %s", inputs, e)
        entries = []
    for entry in entries:
        try:
            is_folder = entry.is_dir()
        except OSError:
            is_folder = False
        if entry.name.startswith(".") or not is_folder:
            continue
        if entry.name in _SKIPPED_LAYOUTS:
            _log.debug("Skipping %r: competition data holds no checkpoints", entry.path)
        elif entry.name in _LAYOUTS:
            source, levels = _LAYOUTS[entry.name]
            plan.append((source, _priority_of(source), Path(entry.path), levels))
        else:
            plan.append(("input_datasets", 1, Path(entry.path), 0))
    plan.sort(key=lambda item: item[1])
    return plan


def _extra_sources(
    extra_sources: Iterable[str | os.PathLike[str] | tuple[Any, int]] | None,
) -> list[tuple[Path, int]]:
    """Folders beyond root to search, from the argument and $KAGGLE_RESUME_SOURCES.

    Each is a path or glob, alone (priority 4, after the Kaggle sources) or as
    (path, priority); in the variable, entries are separated by os.pathsep and
    a priority follows "=". "kagglehub" stands for every dataset version in
    kagglehub's cache ($KAGGLEHUB_CACHE, else ~/.cache/kagglehub).
    """
    wanted: list[tuple[str, int]] = []
    for item in extra_sources or ():
        if isinstance(item, tuple):
            wanted.append((os.fspath(item[0]), int(item[1])))
        else:
            wanted.append((os.fspath(item), len(SOURCES)))
    for text in filter(
        None, os.environ.get("KAGGLE_RESUME_SOURCES", "").split(os.pathsep)
    ):
        path, sep, number = text.rpartition("=")
        if sep and number.strip().isdigit():
            wanted.append((path, int(number)))
        else:
            wanted.append((text, len(SOURCES)))

    found: list[tuple[Path, int]] = []
    for pattern, priority in wanted:
        if pattern == "kagglehub":
            cache = os.environ.get("KAGGLEHUB_CACHE") or "~/.cache/kagglehub"
            pattern = os.path.join(cache, "datasets", "*", "*", "versions", "*")
        expanded = os.path.expanduser(pattern)
        matches = (
            sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        )
        if not matches:
            _log.debug("Extra source %r matches nothing", pattern)
        found += [(Path(match), priority) for match in matches]
    return found


def _locate(
    root: Path,
    patterns: str | Sequence[str] | None,
    extra_sources: Iterable[Any] | None = None,
) -> list[tuple[str, int, Path]]:
    """Every candidate path under root and the extra sources, best source first."""
    match = _matcher(patterns)
    seen_folders: set[tuple[int, int]] = set()
    seen_paths: set[str] = set()
    located = []
    for source, priority, folder, roots in _search_plan(
        root, _extra_sources(extra_sources)
    ):
        anywhere = source != "working"
        depth = roots + _MAX_DEPTH + (0 if anywhere else 1)
        folders = patterns is None
        walk = _walk(folder, match, depth, seen_folders, folders, anywhere, roots)
        for path in walk:
            key = os.path.abspath(path)
            if key not in seen_paths:
                seen_paths.add(key)
                located.append((source, priority, path))
    return located


def find_checkpoint_locations(
    root: str | os.PathLike[str] | None = None,
    patterns: str | Sequence[str] | None = None,
    *,
    extra_sources: Iterable[str | os.PathLike[str] | tuple[Any, int]] | None = None,
) -> dict[str, list[Path]]:
    """List the checkpoint files under a Kaggle root, by source.

    Args:
        root: the Kaggle root; default $KAGGLE_RESUME_ROOT, else "/kaggle".
        patterns: a file name or glob, or several; default *.pth, *.pt, *.ckpt
            and Hugging Face checkpoint-<step> folders.
        extra_sources: folders or globs beyond root (a Drive folder, the
            kagglehub cache), each alone or as (path, priority); see also
            $KAGGLE_RESUME_SOURCES. Their paths are listed under "extra".

    Returns:
        A dict with every name of SOURCES as a key (and "extra" when something
        was found in the extra sources), each a sorted list of the paths found
        there (files, and checkpoint-<step> folders):
        root/working and root/working/checkpoints, and every dataset,
        notebook output and model under root/input, in the flat layout and
        in the nested one. Competition data is skipped.
    """
    base = _root(root)
    found: dict[str, list[Path]] = {source: [] for source in SOURCES}
    for source, _, path in _locate(base, patterns, extra_sources):
        found.setdefault(source, []).append(path)
    for paths in found.values():
        paths.sort()
    _log.debug(
        "Found %s under %r",
        ", ".join(f"{len(paths)} in {source}" for source, paths in found.items()),
        base,
    )
    return found


# --- Inspection ------------------------------------------------------------


@dataclasses.dataclass
class CheckpointInfo:
    """What one candidate checkpoint holds, and whether it can be resumed from.

    ``error`` is None for a valid checkpoint, else the reason it was rejected.
    ``metrics`` holds every numeric scalar found at the top level and in a
    "metrics" dict (the top level wins), as floats.
    """

    path: Path
    source: str
    priority: int
    epoch: int | None = None
    step: int | None = None
    accuracy: float | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    is_valid: bool = False
    error: str | None = None
    size_bytes: int = 0
    mtime: float = 0.0
    keys: list[str] = dataclasses.field(default_factory=list)
    format: str = "torch"  # or "lightning", "hf_trainer"
    version: int | None = None  # a kagglehub .../versions/<N>/ folder

    def reject(self, reason: str) -> CheckpointInfo:
        """Mark this candidate invalid for the given reason."""
        self.is_valid = False
        self.error = reason
        return self


@dataclasses.dataclass
class _Summary:
    """The parts of a checkpoint that inspection needs."""

    keys: list[str]
    scalars: dict[str, Any]  # top-level values that may be numbers
    metrics: dict[str, Any]  # the "metrics" dict, when there is one
    format: str = "torch"


class _LoadError(Exception):
    """A checkpoint that cannot be loaded safely; the message is the reason."""


def _scalar(value: Any) -> int | float | None:
    """The plain number a checkpoint value holds, or None when it holds none."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_meta:
            return None
        value = value.item()
    elif isinstance(value, _TensorRef):
        value = value.value
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _refused_class(message: str) -> str | None:
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(
        r"got <class '([\w.]+)'>", message
    )
    return found.group(1) if found else None


def _runs_code(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    top = module.split(".", 1)[0]
    return attr in _CODE_BUILTINS if top == "builtins" else top in _CODE_MODULES


def _refused_names(path: Path, first: str) -> list[str]:
    """Every name weights_only loading refuses in the file, the first one first."""
    names = [first]
    try:  # reads the pickle's opcodes; runs nothing
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy file, or one torch cannot scan: the first will do
        found = []
    allowed = {"numpy.core.multiarray.scalar"}
    for item in _numpy_globals():
        if not isinstance(item, tuple):
            allowed.add(f"{item.__module__}.{item.__qualname__}")
    names += [n for n in found if n not in allowed and n != first]
    return names


def _explain_load_error(path: Path, error: BaseException) -> str:
    """A one-line reason for a failed torch.load, saying what to do."""
    message = str(error)
    refused = _refused_class(message)
    if isinstance(error, pickle.UnpicklingError) and refused:
        names = _refused_names(path, refused)
        hostile = [name for name in names if _runs_code(name)]
        if hostile:
            return (
                f"Load error: the checkpoint calls {hostile[0]!r}, which would run "
                "code on your machine; it was not run, and this file is unsafe: "
                "do not load it"
            )
        shown = ", ".join(repr(name) for name in names)
        short = ", ".join(name.rsplit(".", 1)[-1] for name in names)
        return (
            f"Load error: the checkpoint holds {shown}, which weights_only "
            f"loading refuses; if you trust {_show(path)!r}, pass "
            f"safe_globals=[{short}] (or trusted=True)"
        )
    first = message.strip().splitlines()[0] if message.strip() else ""
    cut = ("truncated", "unexpected EOF", "ran out of input", "stack underflow")
    if isinstance(error, (EOFError, struct.error, IndexError)) or any(
        word in message for word in cut
    ):  # what torch's legacy reader raises on a short file
        return (
            "Load error: the file ends early or is damaged (truncated); save or "
            f"upload it again ({type(error).__name__}: {first[:120]})"
        )
    return f"Load error: {type(error).__name__}: {first[:200]}"


def _sniff(path: Path) -> bool:
    """Reject files that are plainly no checkpoint; whether it is a zip."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise _LoadError(
                "Load error: truncated zip archive (no end record); the save or "
                "the upload was cut short, save or upload it again"
            )
        return True
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise _LoadError(
            "Load error: an HTML page, not a checkpoint (a failed download?); "
            "download the file again"
        )
    if not head.startswith(b"\x80"):  # the legacy format is a pickle, protocol 2+
        raise _LoadError(
            "Load error: not a torch checkpoint (neither a zip archive nor a "
            f"pickle; it starts with {head[:8]!r})"
        )
    return False


@contextlib.contextmanager
def _allowing(safe_globals: Iterable[Any] | None) -> Iterator[None]:
    """Allow numpy scalars and the caller's classes, for this block only."""
    extra = list(safe_globals or ())
    if extra:
        _log.info("Allowing %s while unpickling (safe_globals)", extra)
    with torch.serialization.safe_globals([*_numpy_globals(), *extra]):
        yield


def _load(
    path: Path,
    *,
    map_location: Any = "cpu",
    mmap: bool = True,
    safe_globals: Iterable[Any] | None = None,
    trusted: bool = False,
) -> Any:
    """Load a checkpoint safely: weights_only, memory-mapped when asked and a zip.

    A memory-mapped checkpoint keeps reading its file after the load, so only
    files nobody rewrites (read-only inputs, or a load dropped at once) are
    mapped: a file truncated by a plain torch.save would corrupt the tensors.
    """
    mmap = _sniff(path) and mmap
    try:
        if trusted:
            _log.warning(
                "Loading %r with weights_only=False: trusted=True was passed", path
            )
            return torch.load(
                path, map_location=map_location, weights_only=False, mmap=mmap
            )
        with _allowing(safe_globals):
            return torch.load(
                path, map_location=map_location, weights_only=True, mmap=mmap
            )
    except Exception as e:
        raise _LoadError(_explain_load_error(path, e)) from e


def _meta_summary(record: bytes) -> _Summary:
    data = json.loads(record)
    return _Summary(
        keys=[str(key) for key in data["keys"]],
        scalars=dict(data["scalars"]),
        metrics=dict(data.get("metrics") or {}),
    )


def _read_meta(path: Path) -> _Summary | None:
    """The summary record save_checkpoint put in the zip, or None.

    save_checkpoint appends it last, so it is found from the end of the file:
    the end-of-archive record, the last central-directory entry and the
    record itself, a few kilobytes read whatever the checkpoint's size.
    """
    try:
        with open(path, "rb") as f:
            record = _last_record(f, "/" + _META_NAME)
        return None if record is None else _meta_summary(record)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        _log.debug("Ignoring the summary record of %r: %s", path, e)
        return None


def _last_record(f: Any, suffix: str) -> bytes | None:
    """The bytes of a zip's last record when its name ends with suffix."""
    size = f.seek(0, os.SEEK_END)
    span = min(size, 22 + 65535)  # the end record and the longest comment
    f.seek(size - span)
    tail = f.read(span)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or span - at < 22:
        return None
    count, listing, start = struct.unpack("<HII", tail[at + 10 : at + 20])
    if 0xFFFF in (count,) or 0xFFFFFFFF in (listing, start):  # zip64
        locator = tail[at - 20 : at]
        if len(locator) < 20 or locator[:4] != b"PK\x06\x07":
            return None
        f.seek(struct.unpack("<Q", locator[8:16])[0])
        end64 = f.read(56)
        if end64[:4] != b"PK\x06\x06":
            return None
        listing, start = struct.unpack("<QQ", end64[40:56])

    window = min(listing, 4096)  # the last entry lies at the listing's end
    f.seek(start + listing - window)
    entries = f.read(window)
    entry = entries[entries.rfind(b"PK\x01\x02") :]
    if len(entry) < 46 or not entry.startswith(b"PK\x01\x02"):
        return None
    method, _, _, crc, stored, plain = struct.unpack("<HHHIII", entry[10:28])
    name_length, extra_length = struct.unpack("<HH", entry[28:32])
    offset = struct.unpack("<I", entry[42:46])[0]
    name = entry[46 : 46 + name_length].decode("utf-8", "replace")
    if method != zipfile.ZIP_STORED or not name.endswith(suffix):
        return None
    if offset == 0xFFFFFFFF:  # the zip64 extra field holds the offset
        extra = entry[46 + name_length : 46 + name_length + extra_length]
        before = [plain, stored].count(0xFFFFFFFF)  # 64-bit sizes come first
        offset = _zip64_offset(extra, before)

    f.seek(offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        return None
    skip = sum(struct.unpack("<HH", local[26:30]))
    f.seek(offset + 30 + skip)
    data: bytes = f.read(stored)
    return data if zlib.crc32(data) == crc else None


def _zip64_offset(extra: bytes, before: int) -> int:
    """The local header offset in a zip64 extra field, after `before` sizes."""
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack("<HH", extra[position : position + 4])
        if kind == 0x0001 and length >= 8 * (before + 1):
            start = position + 4 + 8 * before
            offset: int = struct.unpack("<Q", extra[start : start + 8])[0]
            return offset
        position += 4 + length
    raise ValueError("zip64 entry without an offset")


# Inspection without tensor data: data.pkl of a zip checkpoint is read by an
# unpickler that knows a handful of names and maps each to a harmless stand-in;
# storages become references, and only one-number tensors read their bytes.
_STRUCT_FORMATS = {
    "DoubleStorage": "d",
    "FloatStorage": "f",
    "HalfStorage": "e",
    "BFloat16Storage": "bf16",
    "LongStorage": "q",
    "IntStorage": "i",
    "ShortStorage": "h",
    "CharStorage": "b",
    "ByteStorage": "B",
    "BoolStorage": "?",
}
_NUMPY_FORMATS = {
    "f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
    "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?",
}  # fmt: skip


class _Refused(pickle.UnpicklingError):
    """A name the inspection unpickler does not know: use torch.load instead."""


@dataclasses.dataclass
class _StorageRef:
    kind: str
    key: str


@dataclasses.dataclass
class _TensorRef:
    """Stands for a tensor: its shape, and its value when it holds one number."""

    shape: tuple[int, ...]
    value: int | float | bool | None
    storage: _StorageRef | None = None  # read on demand: see _resolve_numbers
    offset: int = 0

    def __repr__(self) -> str:
        if self.value is None:
            return f"tensor of shape {list(self.shape)}"
        return f"tensor({self.value!r})"


class _NumpyDtype:
    def __init__(self, spec: Any, *_: Any) -> None:
        self.spec = str(spec)
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
            self.order = ">"


def _numpy_scalar(dtype: Any, data: Any = b"") -> int | float | bool:
    fmt = _NUMPY_FORMATS.get(getattr(dtype, "spec", ""))
    if fmt is None or not isinstance(data, bytes):
        raise _Refused(f"numpy scalar of dtype {getattr(dtype, 'spec', dtype)!r}")
    value: int | float | bool = struct.unpack(dtype.order + fmt, data)[0]
    return value


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


class _InspectingUnpickler(pickle.Unpickler):
    """Read a checkpoint's structure without its tensor data; run no code."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, folder: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._folder = folder
        self._names: dict[str, Any] = {
            "collections.OrderedDict": collections.OrderedDict,
            "torch.Size": tuple,
            "_codecs.encode": _latin1,
            "numpy.dtype": _NumpyDtype,
            "numpy.core.multiarray.scalar": _numpy_scalar,
            "numpy._core.multiarray.scalar": _numpy_scalar,
            "torch._utils._rebuild_tensor_v2": self._tensor,
            "torch._utils._rebuild_parameter": _first,
            "torch._utils._rebuild_parameter_with_state": _first,
        }

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self._names:
            return self._names[key]
        if module == "torch" and name in _STRUCT_FORMATS:
            return name
        raise _Refused(key)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"persistent id {pid!r}")
        return _StorageRef(str(pid[1]), str(pid[2]))

    def _tensor(self, storage: Any, offset: int, size: Any, *_: Any) -> _TensorRef:
        if not isinstance(storage, _StorageRef):
            raise _Refused("a tensor without a storage")
        shape = tuple(int(n) for n in size)
        return _TensorRef(shape, None, storage, int(offset))

    def resolve_numbers(self, checkpoint: Any) -> None:
        """Read the one-number tensors inspection looks at, and no others.

        Those are the top-level values, the "metrics" dict and Lightning's
        callback states; the optimizer's per-parameter steps stay unread.
        """
        if not isinstance(checkpoint, Mapping):
            return
        places: list[Any] = [checkpoint, checkpoint.get("metrics")]
        callbacks = checkpoint.get("callbacks")
        if isinstance(callbacks, Mapping):
            places += list(callbacks.values())
        for place in places:
            for value in place.values() if isinstance(place, Mapping) else ():
                one = isinstance(value, _TensorRef) and math.prod(value.shape) == 1
                if one and value.storage is not None:
                    value.value = self._element(value.storage, value.offset)

    def _element(self, storage: _StorageRef, offset: int) -> int | float | bool:
        """One element of a storage, read where it lies: nothing else is read."""
        fmt = _STRUCT_FORMATS[storage.kind]
        width = 2 if fmt == "bf16" else struct.calcsize(fmt)
        raw = self._record_bytes(f"{self._folder}/data/{storage.key}", offset, width)
        if len(raw) != width:
            raise _Refused(f"storage {storage.key} ends early")
        if fmt == "bf16":  # the high half of a float32
            value: int | float | bool = struct.unpack("<f", b"\0\0" + raw)[0]
            return value
        value = struct.unpack("<" + fmt, raw)[0]
        return value

    def _record_bytes(self, name: str, index: int, width: int) -> bytes:
        member = self._archive.getinfo(name)
        if member.compress_type != zipfile.ZIP_STORED:
            return self._archive.read(member)[index * width : (index + 1) * width]
        raw = self._archive.fp
        if raw is None:
            raise _Refused("the archive is closed")
        raw.seek(member.header_offset)
        local = raw.read(30)  # the local file header: name and extra lengths
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        raw.seek(member.header_offset + 30 + name_length + extra_length + index * width)
        return raw.read(width)


def _first(value: Any, *_: Any) -> Any:
    return value


def _read_structure(path: Path) -> Any:
    """A zip checkpoint with tensors replaced by _TensorRef, or None when unsure.

    A summary record some tool moved away from the end comes back as a
    _Summary.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickled = next((n for n in names if n.endswith("/data.pkl")), None)
            if pickled is None:
                return None
            folder = pickled.rsplit("/", 1)[0]
            if f"{folder}/byteorder" in names:
                if archive.read(f"{folder}/byteorder").strip() != b"little":
                    return None
            if f"{folder}/{_META_NAME}" in names:  # not last: some tool appended
                return _meta_summary(archive.read(f"{folder}/{_META_NAME}"))
            with archive.open(pickled) as f:
                unpickler = _InspectingUnpickler(f, archive, folder)
                checkpoint = unpickler.load()
                unpickler.resolve_numbers(checkpoint)
                return checkpoint
    except Exception as e:  # anything unusual goes the torch.load way
        _log.debug("Inspecting %r through torch.load: %s", path, e)
        return None


def _summarize(obj: Any) -> _Summary:
    if not isinstance(obj, Mapping):
        raise _LoadError(
            f"Not a checkpoint dict: the file holds a {type(obj).__name__}; save "
            "a dict with 'epoch' and 'model_state_dict' (see save_checkpoint)"
        )
    judged = {"epoch", *_STEP_KEYS, "accuracy", *ACCURACY_ALIASES}
    scalars = {
        str(key): value
        for key, value in obj.items()
        if key in judged or not isinstance(value, (Mapping, list, tuple))
    }
    found = obj.get("metrics")
    metrics = dict(found) if isinstance(found, Mapping) else {}
    keys = [str(key) for key in obj]
    if not _is_lightning(keys):
        return _Summary(keys, scalars, metrics)
    for name, score in _lightning_scores(obj).items():
        metrics.setdefault(name, score)
    return _Summary(keys, scalars, metrics, format="lightning")


def _is_lightning(keys: Sequence[str]) -> bool:
    return "pytorch-lightning_version" in keys or (
        "state_dict" in keys and "optimizer_states" in keys
    )


def _lightning_scores(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The scores ModelCheckpoint recorded: {monitor: score, "best_model_score"}."""
    scores: dict[str, Any] = {}
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, Mapping):
        return scores
    for name, state in callbacks.items():
        if not (str(name).startswith("ModelCheckpoint") and isinstance(state, Mapping)):
            continue
        best = state.get("best_model_score")
        current = state.get("current_score")
        monitor = state.get("monitor")
        if isinstance(monitor, str) and (current is not None or best is not None):
            scores.setdefault(monitor, best if current is None else current)
        if best is not None:
            scores.setdefault("best_model_score", best)
    return scores


def _judge(
    info: CheckpointInfo, summary: _Summary, required_keys: Sequence[str] | None
) -> CheckpointInfo:
    """Fill info from a summary and decide whether the checkpoint is valid."""
    info.keys = list(summary.keys)
    info.format = summary.format
    scalars = summary.scalars

    if required_keys is None:
        missing = [] if "epoch" in summary.keys else ["epoch"]
        if not any(key in summary.keys for key in _MODEL_KEYS):
            missing.append(_MODEL_KEYS[0])
    else:
        missing = [key for key in required_keys if key not in summary.keys]
    if missing:
        note = ""
        if _MODEL_KEYS[0] in missing and required_keys is None:
            note = " (a model state under 'model_state_dict', 'state_dict' or 'model')"
        return info.reject(f"Missing keys: {missing}{note}")

    for name in (*scalars, *summary.metrics):
        if name in _NOT_METRICS or name in info.metrics:
            continue
        value = _scalar(scalars.get(name, summary.metrics.get(name)))
        if value is not None:
            info.metrics[name] = float(value)

    if "epoch" in scalars:
        raw = scalars["epoch"]
        epoch = _scalar(raw)
        if not isinstance(epoch, int) or epoch < 0:
            return info.reject(f"Invalid epoch: {raw!r} (expected an integer >= 0)")
        info.epoch = epoch
    for key in _STEP_KEYS:
        if key in scalars:
            raw = scalars[key]
            step = _scalar(raw)
            if not isinstance(step, int) or step < 0:
                return info.reject(f"Invalid step: {raw!r} (expected an integer >= 0)")
            info.step = step
            break

    # "accuracy" at the top, then in "metrics"; then the aliases, likewise.
    places = [("accuracy", scalars), ("accuracy", summary.metrics)]
    places += [(alias, scalars) for alias in ACCURACY_ALIASES]
    places += [(alias, summary.metrics) for alias in ACCURACY_ALIASES]
    for name, where in places:
        if where.get(name) is None:  # absent, or stored as None
            continue
        raw = where[name]
        accuracy = _scalar(raw)
        if accuracy is None or not math.isfinite(accuracy) or not 0 <= accuracy <= 1:
            hint = ""
            if accuracy is not None and 1 < accuracy <= 100:
                hint = (
                    f"; if {accuracy:g} means {accuracy:g}%, store {accuracy / 100:g}"
                )
            return info.reject(
                f"Invalid accuracy: {raw!r} (accuracy must lie in [0, 1]{hint})"
            )
        info.accuracy = float(accuracy)
        info.metrics.setdefault("accuracy", float(accuracy))
        break

    info.is_valid = True
    info.error = None
    return info


def get_checkpoint_info(
    path: str | os.PathLike[str],
    *,
    required_keys: Sequence[str] | None = None,
    source: str | None = None,
    priority: int | None = None,
    root: str | os.PathLike[str] | None = None,
    safe_globals: Iterable[Any] | None = None,
    trusted: bool = False,
) -> CheckpointInfo:
    """Inspect one checkpoint without ever running code from it.

    Never raises for a bad file: the reason goes into ``error``. Tensor bytes
    are not read: a checkpoint written by save_checkpoint is read from the
    small summary record at its end; another zip checkpoint through an
    unpickler that knows only plain data, tensors and numpy scalars (anything
    else goes to torch.load with weights_only=True and mmap=True); a legacy
    file through torch.load with weights_only=True. A Hugging Face
    checkpoint-<step> folder is read from its trainer_state.json.

    Args:
        path: the checkpoint file.
        required_keys: keys that must be present; default "epoch" plus a model
            state under "model_state_dict", "state_dict" or "model".
        source, priority: where the file comes from; by default they follow
            from where the path lies under root.
        root: the Kaggle root; default $KAGGLE_RESUME_ROOT, else "/kaggle".
        safe_globals: classes to allow while unpickling, for this call only.
        trusted: load with weights_only=False (code in the file can run).

    Returns:
        A CheckpointInfo; ``is_valid`` says whether it can be resumed from.
    """
    path = Path(path)
    if source is None:
        source = _source_of(path, _root(root))
    if priority is None:
        priority = _priority_of(source)
    info = CheckpointInfo(path=path, source=source, priority=priority)
    versioned = _VERSION.search(os.fspath(path))
    if versioned:
        info.version = int(versioned.group(1))

    try:
        status = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return info.reject("Not found: a broken symlink; its target is missing")
        return info.reject("Not found: the file does not exist (removed?)")
    except OSError as e:
        return info.reject(f"Load error: cannot read the file: {e.strerror or e}")
    if stat.S_ISDIR(status.st_mode) and _is_hf_folder(path):
        try:
            return _judge(info, _inspect_hf(info, path), required_keys)
        except _LoadError as e:
            return info.reject(str(e))
    if not stat.S_ISREG(status.st_mode):
        return info.reject(
            "Not a file: a folder or special file whose name looks like a checkpoint"
        )
    info.size_bytes = status.st_size
    info.mtime = status.st_mtime
    if status.st_size == 0:
        return info.reject("Empty file (0 bytes): the save never wrote anything")

    try:
        zipped = _is_zip(path)
        summary = _read_meta(path) if zipped else None
        if summary is None:
            found = _read_structure(path) if zipped else None
            if isinstance(found, _Summary):
                summary = found
            else:
                obj = found
                if obj is None:
                    obj = _load(path, safe_globals=safe_globals, trusted=trusted)
                summary = _summarize(obj)
                del obj
    except _LoadError as e:
        return info.reject(str(e))
    except OSError as e:
        return info.reject(f"Load error: cannot read the file: {e.strerror or e}")
    except Exception as e:  # a bad file must never stop a scan
        return info.reject(f"Load error: {type(e).__name__}: {e}")
    return _judge(info, summary, required_keys)


def _info_from_checkpoint(
    info: CheckpointInfo, checkpoint: Any, required_keys: Sequence[str] | None
) -> CheckpointInfo:
    """Judge a fully loaded checkpoint (its summary record may have lied)."""
    fresh = dataclasses.replace(info, metrics={}, keys=[], is_valid=False, error=None)
    try:
        return _judge(fresh, _summarize(checkpoint), required_keys)
    except _LoadError as e:
        return fresh.reject(str(e))


# --- Hugging Face Trainer folders -----------------------------------------

_HF_STATE = "trainer_state.json"
_HF_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_HF_PARTS = {
    "optimizer.pt": "optimizer_state_dict",
    "scheduler.pt": "scheduler_state_dict",
    "scaler.pt": "scaler_state_dict",
}
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _is_hf_folder(path: Path) -> bool:
    return bool(_HF_FOLDER.fullmatch(path.name)) or (path / _HF_STATE).is_file()


def _hf_state(folder: Path) -> dict[str, Any]:
    """trainer_state.json of a Trainer checkpoint folder, or _LoadError."""
    path = folder / _HF_STATE
    if not path.is_file():
        raise _LoadError(
            f"Missing keys: [{_HF_STATE!r}] (a Hugging Face checkpoint folder "
            "that was not fully written; use an earlier checkpoint-<step>)"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _LoadError(
            f"Load error: {_HF_STATE} is unreadable ({e}); the folder was not "
            "fully written, use an earlier checkpoint-<step>"
        ) from e
    if not isinstance(state, dict):
        raise _LoadError(f"Load error: {_HF_STATE} does not hold a JSON object")
    return state


def _hf_weights(folder: Path) -> Path:
    """The model weights file of a Trainer checkpoint, checked, or _LoadError."""
    for name in _HF_WEIGHTS:
        if (folder / name).is_file():
            weights = folder / name
            break
    else:
        raise _LoadError(
            "Missing keys: ['model.safetensors'] (no model weights in this "
            "Hugging Face checkpoint folder: it was not fully written)"
        )
    for part in _weight_files(weights):
        if part.suffix == ".safetensors":
            _safetensors_header(part)
        else:
            _sniff(part)
    return weights


def _weight_files(weights: Path) -> list[Path]:
    """The files holding the weights: the shards an index names, or itself."""
    if not weights.name.endswith(".index.json"):
        return [weights]
    try:
        index = json.loads(weights.read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise _LoadError(f"Load error: {weights.name} is unreadable ({e})") from e
    missing = [name for name in shards if not (weights.parent / name).is_file()]
    if missing:
        raise _LoadError(f"Missing keys: {missing} (shards named by {weights.name})")
    return [weights.parent / name for name in shards]


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a .safetensors file and where its data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if length > size - 8:
            raise _LoadError(f"Load error: {path.name} is truncated (no full header)")
        try:
            header = json.loads(f.read(length))
            end = max(
                (
                    int(v["data_offsets"][1])
                    for k, v in header.items()
                    if k != "__metadata__"
                ),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise _LoadError(f"Load error: {path.name} has a bad header ({e})") from e
    if 8 + length + end > size:
        raise _LoadError(
            f"Load error: {path.name} is truncated: {size} bytes, its header "
            f"describes {8 + length + end}; the save or upload was cut short"
        )
    return header, 8 + length


def _read_safetensors(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    """Load a .safetensors file with torch alone (the format is a JSON header)."""
    header, start = _safetensors_header(path)
    size = path.stat().st_size
    data = torch.from_file(os.fspath(path), shared=False, size=size, dtype=torch.uint8)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise _LoadError(f"Load error: {path.name}: dtype {entry['dtype']} unknown")
        first, last = (start + int(n) for n in entry["data_offsets"])
        raw = data[first:last].clone()
        tensor = raw.view(dtype).reshape(entry["shape"])
        tensors[name] = tensor.to(map_location) if map_location is not None else tensor
    return tensors


def _inspect_hf(info: CheckpointInfo, folder: Path) -> _Summary:
    """Read a Trainer checkpoint folder's state without loading its weights."""
    state = _hf_state(folder)
    _hf_weights(folder)
    info.mtime = (folder / _HF_STATE).stat().st_mtime
    info.size_bytes = _folder_bytes(folder)

    scalars: dict[str, Any] = {}
    done = _scalar(state.get("epoch"))
    if done is None or isinstance(done, bool) or done < 0:
        raise _LoadError(
            f"Invalid epoch: {state.get('epoch')!r} in {_HF_STATE} (expected a "
            "number >= 0)"
        )
    if done >= 1:  # epochs done, as a float; ours is the last finished one
        scalars["epoch"] = math.floor(done) - 1
    scalars["global_step"] = state.get("global_step")

    step = state.get("global_step")
    metrics: dict[str, Any] = {"epochs_done": float(done)}
    for entry in state.get("log_history") or []:
        if isinstance(entry, Mapping) and entry.get("step") == step:
            for key, value in entry.items():
                if key not in ("epoch", "step") and _scalar(value) is not None:
                    metrics[key] = value
    if _scalar(state.get("best_metric")) is not None:
        metrics["best_metric"] = state["best_metric"]
    keys = ["epoch", "global_step", "model_state_dict", _HF_STATE]
    keys += sorted(name for name in _HF_PARTS if (folder / name).is_file())
    return _Summary(keys, scalars, metrics, format="hf_trainer")


def _load_hf(
    folder: Path,
    *,
    map_location: Any,
    safe_globals: Iterable[Any] | None,
    trusted: bool,
) -> dict[str, Any]:
    """A Trainer checkpoint folder as a checkpoint dict of this module's keys."""
    state = _hf_state(folder)
    weights = _hf_weights(folder)
    model_state: dict[str, Any] = {}
    for part in _weight_files(weights):
        if part.suffix == ".safetensors":
            model_state.update(_read_safetensors(part, map_location))
        else:
            loaded = _load(
                part,
                map_location=map_location,
                mmap=False,
                safe_globals=safe_globals,
                trusted=trusted,
            )
            model_state.update(loaded)
    checkpoint: dict[str, Any] = {
        "global_step": state.get("global_step"),
        "model_state_dict": model_state,
        "trainer_state": state,
        "history": state.get("log_history") or [],
    }
    done = _scalar(state.get("epoch"))
    if done is not None and done >= 1:
        checkpoint["epoch"] = math.floor(done) - 1
    for name, key in _HF_PARTS.items():
        if (folder / name).is_file():
            checkpoint[key] = _load(
                folder / name,
                map_location=map_location,
                mmap=False,
                safe_globals=safe_globals,
                trusted=trusted,
            )
    return checkpoint


# --- Selection -------------------------------------------------------------


def _resolve_mode(metric: str, mode: str | None) -> str:
    if mode is None:
        lowered = metric.lower()
        return "min" if any(word in lowered for word in _LOWER_IS_BETTER) else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or None, not {mode!r}")
    return mode


def _metric_value(info: CheckpointInfo, metric: str) -> float | None:
    value = info.accuracy if metric == "accuracy" else info.metrics.get(metric)
    if value is None or not math.isfinite(value):
        return None
    return value


def _num(value: int | None) -> int:
    return -1 if value is None else value


def _rank(
    candidates: Iterable[CheckpointInfo], prefer_metric: str | None, mode: str | None
) -> tuple[list[CheckpointInfo], str]:
    """The valid candidates, best first, and a phrase saying how they were ranked."""
    valid = [info for info in candidates if info.is_valid]

    def tail(info: CheckpointInfo) -> tuple[int, float, str]:
        return (-_num(info.version), -info.mtime, os.fspath(info.path))

    if prefer_metric is None:
        valid.sort(key=lambda i: (i.priority, -_num(i.epoch), -_num(i.step), *tail(i)))
        return valid, "by source priority, then the higher epoch"
    if prefer_metric in _LATEST:
        valid.sort(key=lambda i: (-_num(i.epoch), -_num(i.step), i.priority, *tail(i)))
        return valid, "by the highest epoch, then step"

    chosen_mode = _resolve_mode(prefer_metric, mode)
    sign = -1.0 if chosen_mode == "max" else 1.0

    def by_metric(info: CheckpointInfo) -> tuple[Any, ...]:
        value = _metric_value(info, prefer_metric)
        missing = value is None
        score = 0.0 if value is None else sign * value
        return (missing, score, -_num(info.epoch), info.priority, *tail(info))

    valid.sort(key=by_metric)
    best = "highest" if chosen_mode == "max" else "lowest"
    return valid, f"by the {best} {prefer_metric}"


def _scan(
    root: Path,
    patterns: str | Sequence[str] | None,
    required_keys: Sequence[str] | None,
    safe_globals: Iterable[Any] | None,
    trusted: bool,
    extra_sources: Iterable[Any] | None = None,
) -> CandidateList:
    """Inspect every checkpoint found under root, logging each one."""
    candidates = CandidateList(root=root)
    for source, priority, path in _locate(root, patterns, extra_sources):
        info = get_checkpoint_info(
            path,
            required_keys=required_keys,
            source=source,
            priority=priority,
            root=root,
            safe_globals=safe_globals,
            trusted=trusted,
        )
        if info.is_valid:
            _log.info(
                "Found [%s] %r: epoch %s, step %s, accuracy %s",
                source,
                path,
                info.epoch,
                info.step,
                info.accuracy,
            )
        else:
            _log.warning("Rejected [%s] %r: %s", source, path, info.error)
        candidates.append(info)
    return candidates


def find_best_checkpoint_across_sources(
    prefer_metric: str | None = None,
    *,
    mode: str | None = None,
    root: str | os.PathLike[str] | None = None,
    patterns: str | Sequence[str] | None = None,
    required_keys: Sequence[str] | None = None,
    safe_globals: Iterable[Any] | None = None,
    trusted: bool = False,
    extra_sources: Iterable[str | os.PathLike[str] | tuple[Any, int]] | None = None,
) -> tuple[Path | None, CheckpointInfo | None, CandidateList]:
    """Find every checkpoint, inspect each one and choose the best valid one.

    Args:
        prefer_metric: None chooses by source priority (working, then input
            datasets, notebook outputs, models; ties by epoch, step, newer
            file). "epoch" or "latest" chooses the highest epoch. Any other
            name chooses by that metric ("accuracy" uses its aliases too).
        mode: "max" or "min" for the metric; by default "min" for names with
            loss, error or perplexity in them, else "max".
        root, patterns, required_keys, safe_globals, trusted, extra_sources:
            as for find_checkpoint_locations and get_checkpoint_info.

    Returns:
        (best_path, best_info, all_candidates); (None, None, all_candidates)
        when no candidate is valid. all_candidates keeps discovery order; it
        is a list that prints as a table (and renders as one in Jupyter).
    """
    base = _root(root)
    candidates = _scan(
        base, patterns, required_keys, safe_globals, trusted, extra_sources
    )
    ranked, how = _rank(candidates, prefer_metric, mode)
    if not ranked:
        _log.info("No valid checkpoint among %d candidates", len(candidates))
        return None, None, candidates
    best = ranked[0]
    candidates.chosen = best.path
    _log.info(
        "Chose %r (%s, epoch %s) %s among %d valid of %d candidates",
        best.path,
        best.source,
        best.epoch,
        how,
        len(ranked),
        len(candidates),
    )
    return best.path, best, candidates


# --- Copy ------------------------------------------------------------------


def _format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _no_space(needed: int, free: int, folder: Path, what: str) -> OSError:
    message = (
        f"Not enough space in {_show(folder)!r} to {what}: {needed} bytes "
        f"({_format_bytes(needed)}) needed, {free} bytes ({_format_bytes(free)}) "
        f"free; delete old checkpoints there (Kaggle caps /kaggle/working at 20 GB)"
    )
    return OSError(errno.ENOSPC, message)


def _check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise _no_space(needed, free, folder, what)


def _temp_path(dst: Path) -> Path:
    """A hidden name beside dst that no checkpoint pattern matches."""
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return dst.with_name(f".{dst.name}.{token}{_TEMP_SUFFIX}")


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _atomic_target(
    dst: Path, needed: int, what: str, *, durable: bool = True
) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces dst, else it is removed.

    durable=True fsyncs the file and its folder, so the new file survives a
    machine crash too; a copy whose source stays in the input skips that
    (a killed process loses nothing either way: the rename is atomic).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dst)
    _check_space(dst.parent, needed, what)
    temp = _temp_path(dst)
    try:
        yield temp
        if durable:
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(temp, dst)
    except BaseException as e:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(e, Exception):
            free = shutil.disk_usage(dst.parent).free
            if _is_disk_full(e) or free < needed:
                raise _no_space(needed, free, dst.parent, what) from e
        raise
    if durable:
        _fsync_folder(dst.parent)


def _is_disk_full(error: BaseException) -> bool:
    """Whether an error means the disk filled (torch.save wraps it in RuntimeError)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, RuntimeError) and "No space left" in str(error)


def _remove_stale_temps(dst: Path) -> None:
    """Remove temporary files for dst left by a process that was killed."""
    pattern = re.compile(
        re.escape(f".{dst.name}.") + r"(\d+)\.[0-9a-f]+" + _TEMP_SUFFIX
    )
    with contextlib.suppress(OSError), os.scandir(dst.parent) as entries:
        for entry in entries:
            found = pattern.fullmatch(entry.name)
            if found is None or _process_alive(int(found.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                _log.info("Removed %r, left by a process that was killed", entry.path)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def _backup_name(dst: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = dst.with_name(f"{dst.name}.bak-{stamp}")
    number = 1
    while backup.exists():
        number += 1
        backup = dst.with_name(f"{dst.name}.bak-{stamp}-{number}")
    return backup


def _copy(src: Path, root: Path) -> tuple[Path, Path | None, bool]:
    """Copy src into root/working/checkpoints.

    Returns (dst, the backup of a different file that was at dst or None,
    whether a copy was made: False when dst already held the same bytes).
    """
    dst = root / "working" / "checkpoints" / src.name
    if src.is_dir():
        return _copy_folder(src, dst)
    size = src.stat().st_size
    backup = None
    if dst.exists():
        if dst.stat().st_size == size and _same_bytes(src, dst):
            _log.info("%r is already in working as %r: not copied again", src, dst)
            return dst, None, False
        backup = _backup_name(dst)

    with _atomic_target(dst, size, f"copy {_show(src)!r}", durable=False) as temp:
        _copy_bytes(src, temp, size)
        mtime = src.stat().st_mtime
        os.utime(temp, (mtime, mtime))
        if backup is not None:
            os.replace(dst, backup)
            _log.warning(
                "Kept the different file that was at %r as %r", dst, backup.name
            )
    _log.info("Copied %r to %r (%s)", src, dst, _format_bytes(size))
    return dst, backup, True


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (read now, never from a cache)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as left, open(b, "rb") as right:
        while True:
            chunk = left.read(_CHUNK)
            if chunk != right.read(_CHUNK):
                return False
            if not chunk:
                return True


def _same_tree(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes."""

    def files(top: Path) -> dict[str, Path]:
        return {os.fspath(p.relative_to(top)): p for p in top.rglob("*") if p.is_file()}

    left, right = files(a), files(b)
    return left.keys() == right.keys() and all(
        _same_bytes(left[name], right[name]) for name in left
    )


def _copy_folder(src: Path, dst: Path) -> tuple[Path, Path | None, bool]:
    """Copy a checkpoint folder atomically: into a hidden folder, then rename."""
    backup = None
    if dst.exists():
        if dst.is_dir() and _same_tree(src, dst):
            _log.info("%r is already in working as %r: not copied again", src, dst)
            return dst, None, False
        backup = _backup_name(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dst)
    size = _folder_bytes(src)
    what = f"copy {_show(src)!r}"
    _check_space(dst.parent, size, what)

    temp = _temp_path(dst)
    try:
        shutil.copytree(src, temp, copy_function=shutil.copyfile)
        for folder in (temp, *(p for p in temp.rglob("*") if p.is_dir())):
            folder.chmod(0o755)  # copytree kept the read-only modes of the input
        if backup is not None:
            os.replace(dst, backup)
            _log.warning("Kept the different folder at %r as %r", dst, backup.name)
        os.replace(temp, dst)
    except BaseException as e:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(e, Exception) and _is_disk_full(e):
            free = shutil.disk_usage(dst.parent).free
            raise _no_space(size, free, dst.parent, what) from e
        raise
    _fsync_folder(dst.parent)
    _log.info("Copied the folder %r to %r (%s)", src, dst, _format_bytes(size))
    return dst, backup, True


def _copy_bytes(src: Path, dst: Path, size: int) -> None:
    """Copy a file's bytes in the kernel; show progress for a big one."""
    if size < _PROGRESS_BYTES or not hasattr(os, "sendfile"):
        shutil.copyfile(src, dst)  # sendfile on Linux, a read loop elsewhere
        return
    update, close = _progress(size, f"Copying {src.name}")
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            done = 0
            while done < size:
                sent = os.sendfile(fout.fileno(), fin.fileno(), done, _SEND_BYTES)
                if sent == 0:
                    break
                done += sent
                update(sent)
    finally:
        close()


def _progress(
    total: int, label: str
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A progress display: tqdm.auto where it imports, else a log line per 10%."""
    try:
        tqdm_auto = importlib.import_module("tqdm.auto")
    except ImportError:
        tqdm_auto = None
    if tqdm_auto is not None:
        bar = tqdm_auto.tqdm(total=total, unit="B", unit_scale=True, desc=label)
        return bar.update, bar.close

    done = [0, 0]  # bytes, last tenth logged

    def update(count: int) -> None:
        done[0] += count
        tenth = done[0] * 10 // max(total, 1)
        if tenth > done[1]:
            done[1] = tenth
            _log.info("%s: %d%% of %s", label, tenth * 10, _format_bytes(total))

    return update, lambda: None


def copy_checkpoint_to_working(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> Path:
    """Make a checkpoint writable: copy it from an input into working.

    A checkpoint already under root/working is returned as it is. Another is
    copied to root/working/checkpoints/<name> through a temporary file and
    os.replace, so a kill mid-copy leaves no half file under that name. A
    byte-identical file there is not copied again; a different one is kept
    under a backup name that no checkpoint pattern matches.

    Raises:
        OSError: with errno ENOSPC when the copy does not fit (nothing is
            written), or when the source cannot be read.
    """
    base = _root(root)
    src = Path(path)
    if _is_under(src, base / "working"):
        return src
    return _copy(src, base)[0]


# --- Save ------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DataParallel, DistributedDataParallel and torch.compile."""
    while True:
        inner = getattr(model, "module", None) if isinstance(model, _WRAPPERS) else None
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain numbers only."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, position, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = {
            "name": str(name),
            "keys": torch.tensor(keys.astype("int64")),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    python = state.get("python")
    if python:
        internal = tuple(int(x) for x in python["state"].tolist())
        random.setstate((python["version"], internal, python["gauss"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])
        else:
            _log.warning("CUDA RNG states not restored: the GPU count changed")
    numpy_state = state.get("numpy")
    numpy = sys.modules.get("numpy")
    if numpy_state and numpy is not None:
        numpy.random.set_state(
            (
                numpy_state["name"],
                numpy.asarray(numpy_state["keys"].tolist(), dtype=numpy.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )


def _save_path(path: str | os.PathLike[str] | None, root: Path) -> Path:
    folder = root / "working" / "checkpoints"
    if path is None:
        return folder / "checkpoint.pth"
    chosen = Path(path)
    if chosen.parent == Path("."):
        chosen = folder / chosen
    if _is_under(chosen, root / "input"):
        raise ValueError(
            f"Cannot save to {_show(chosen)!r}: {_show(root / 'input')!r} is "
            "read-only on Kaggle; save under root/working instead"
        )
    return chosen


def _summary_record(checkpoint: Mapping[str, Any]) -> bytes:
    scalars = {}
    for key, value in checkpoint.items():
        number = _scalar(value) if not isinstance(value, Mapping) else None
        if number is not None:
            scalars[key] = number
    metrics = {
        str(key): number
        for key, value in (checkpoint.get("metrics") or {}).items()
        if (number := _scalar(value)) is not None
    }
    record = {"format_version": _FORMAT_VERSION, "keys": list(checkpoint)}
    record.update(scalars=scalars, metrics=metrics)
    return json.dumps(record).encode()


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def save_checkpoint(
    path: str | os.PathLike[str] | None = None,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int,
    step: int | None = None,
    accuracy: float | None = None,
    metrics: Mapping[str, float] | None = None,
    history: Any = None,
    extra: Mapping[str, Any] | None = None,
    root: str | os.PathLike[str] | None = None,
    keep_last: int | None = None,
    keep_best: str | None = None,
    budget: int | None = _BUDGET_BYTES,
) -> Path:
    """Save everything needed to resume, atomically.

    The file is written to a temporary name in the same folder, flushed,
    fsynced and moved over the old one, so the previous checkpoint survives a
    kill at any point. It loads with a plain torch.load(path, weights_only=True).

    Args:
        path: a file; a bare name goes into root/working/checkpoints/, None
            means root/working/checkpoints/checkpoint.pth.
        model: its state is saved without DataParallel/DDP or compile prefixes.
        optimizer, scheduler, scaler: saved when given.
        epoch: the epoch just finished (an int >= 0); resume starts at epoch+1.
        step, accuracy, metrics, history, extra: saved when given; accuracy
            must lie in [0, 1].
        root: the Kaggle root; default $KAGGLE_RESUME_ROOT, else "/kaggle".
        keep_last: keep only the newest keep_last files of this file's series
            (checkpoint_0010.pth, checkpoint_0020.pth, ...: the same name
            around a different number), ordered by the epoch and step they
            hold, never by name. Only root/working/checkpoints is rotated.
        keep_best: a metric ("accuracy", "val_loss", ...) whose best file of
            the series is never removed; min for loss/error/perplexity names.
        budget: the bytes root/working may hold (default 20 GB, Kaggle's cap;
            None for no limit). A save that would pass it first removes old
            files of the series when keep_last allows it, else raises
            before writing anything.

    Returns:
        The path written.

    Raises:
        ValueError: a bad epoch, step or accuracy, or a path under root/input.
        OSError: errno ENOSPC when the checkpoint does not fit on the disk or
            in the budget; the previous file is kept and no partial file is
            left.
    """
    epoch_value = _scalar(epoch)
    if not isinstance(epoch_value, int) or epoch_value < 0:
        raise ValueError(f"epoch must be an integer >= 0, not {epoch!r}")
    step_value = None if step is None else _scalar(step)
    if step is not None and (not isinstance(step_value, int) or step_value < 0):
        raise ValueError(f"step must be an integer >= 0, not {step!r}")
    accuracy_value = None if accuracy is None else _scalar(accuracy)
    if accuracy is not None and (
        accuracy_value is None
        or not math.isfinite(accuracy_value)
        or not 0 <= accuracy_value <= 1
    ):
        raise ValueError(
            f"accuracy must lie in [0, 1], not {accuracy!r}; store a fraction"
        )
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, not {keep_last!r}")
    base = _root(root)
    dst = _save_path(path, base)
    rank = _rank_and_size()[0]
    if rank != 0:  # one writer; never wait on the others (many loops save on 0)
        _log.debug("Rank %d does not write %r: rank 0 does", rank, dst)
        return dst

    checkpoint: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "epoch": epoch_value,
        "model_state_dict": _unwrap(model).state_dict(),
    }
    if step is not None:
        checkpoint["step"] = step_value
    parts = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    for name, part in parts.items():
        if part is not None:
            checkpoint[f"{name}_state_dict"] = part.state_dict()
    if accuracy is not None:
        checkpoint["accuracy"] = float(accuracy_value)  # type: ignore[arg-type]
    if metrics is not None:
        checkpoint["metrics"] = {
            str(key): value if (number := _scalar(value)) is None else number
            for key, value in metrics.items()
        }
    if history is not None:
        checkpoint["history"] = history
    checkpoint["rng_state"] = _rng_state()
    if extra is not None:
        checkpoint["extra"] = dict(extra)

    needed = _tensor_bytes(checkpoint) + (1 << 20)
    rotating = _is_under(dst, base / "working" / "checkpoints")
    if budget is not None and _is_under(dst, base / "working"):
        allowed = keep_last is not None and rotating
        _make_room(dst, base / "working", needed, budget, allowed, keep_best)
    with _atomic_target(dst, needed, "save a checkpoint") as temp:
        with open(temp, "wb") as f:  # a file object: the zip's folder is "archive"
            torch.save(checkpoint, f)
        with zipfile.ZipFile(temp, "a") as archive:
            data = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            folder = data.rsplit("/", 1)[0]
            archive.writestr(f"{folder}/{_META_NAME}", _summary_record(checkpoint))
    _log.info("Saved epoch %s to %r", epoch_value, dst)
    if keep_last is not None and rotating:
        _rotate(dst, keep_last, keep_best)
    elif keep_last is not None:
        _log.warning("Not rotating %r: only root/working/checkpoints is rotated", dst)
    return dst


# Rotation: the files of one series share a name around a number.
_SERIES = re.compile(r"(?P<head>.*?)(?P<number>\d+)(?P<tail>\.[^.\d][^.]*)$")


def _series(dst: Path) -> list[Path]:
    """The files of dst's series in its folder, dst included when it exists."""
    found = _SERIES.fullmatch(dst.name)
    if found is None:
        return [dst] if dst.exists() else []
    member = re.compile(
        re.escape(found["head"]) + r"\d+" + re.escape(found["tail"]), re.IGNORECASE
    )
    with os.scandir(dst.parent) as entries:
        return sorted(
            Path(e.path)
            for e in entries
            if member.fullmatch(e.name) and e.is_file(follow_symlinks=False)
        )


def _series_order(paths: Iterable[Path]) -> list[CheckpointInfo]:
    """Newest first, by the epoch and step stored in (or numbered in) each file."""
    infos = [get_checkpoint_info(p, required_keys=()) for p in paths]

    def key(info: CheckpointInfo) -> tuple[int, int, float]:
        found = _SERIES.fullmatch(info.path.name)
        number = int(found["number"]) if found else -1
        epoch = info.epoch if info.epoch is not None else number
        return (-epoch, -_num(info.step), -info.mtime)

    return sorted(infos, key=key)


def _protected(ordered: list[CheckpointInfo], keep_best: str | None) -> set[Path]:
    """The newest file and, when asked, the best by keep_best: never removed."""
    keep = {ordered[0].path} if ordered else set()
    if keep_best is not None:
        ranked, _ = _rank(
            [i for i in ordered if _metric_value(i, keep_best) is not None],
            keep_best,
            None,
        )
        if ranked:
            keep.add(ranked[0].path)
    return keep


def _rotate(dst: Path, keep_last: int, keep_best: str | None) -> None:
    """Remove the files of dst's series beyond the newest keep_last."""
    ordered = _series_order(_series(dst))
    keep = _protected(ordered, keep_best) | {dst}
    keep.update(info.path for info in ordered[:keep_last])
    for info in ordered:
        if info.path not in keep:
            with contextlib.suppress(FileNotFoundError):
                info.path.unlink()
                _log.info("Removed %r (keep_last=%d)", info.path, keep_last)


def _folder_bytes(folder: Path) -> int:
    total = 0
    for top, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def _make_room(
    dst: Path,
    working: Path,
    needed: int,
    budget: int,
    allowed: bool,
    keep_best: str | None,
) -> None:
    """Keep root/working under budget: remove old files of the series, or raise.

    Nothing is removed unless the removals make the save fit.
    """
    used = _folder_bytes(working)
    if dst.exists():
        used -= dst.stat().st_size  # replaced by the new file
    over = used + needed - budget
    if over <= 0:
        return

    removable: list[CheckpointInfo] = []
    if allowed:
        ordered = _series_order(p for p in _series(dst) if p != dst)
        keep = _protected(ordered, keep_best)
        removable = [info for info in reversed(ordered) if info.path not in keep]
    chosen, freed = [], 0
    for info in removable:
        if freed >= over:
            break
        chosen.append(info)
        freed += info.size_bytes
    if freed < over:
        hint = (
            "pass keep_last=N to let old checkpoints of this series go"
            if not allowed
            else "delete other files from it"
        )
        raise OSError(
            errno.ENOSPC,
            f"Saving {_show(dst)!r} needs about {needed} bytes "
            f"({_format_bytes(needed)}), and {_show(working)!r} already holds "
            f"{used} bytes: that passes the budget of {budget} bytes "
            f"({_format_bytes(budget)}); {hint}, or raise budget=",
        )
    for info in chosen:
        with contextlib.suppress(FileNotFoundError):
            info.path.unlink()
            _log.info("Removed %r to stay within the budget", info.path)


# --- Resume ----------------------------------------------------------------


@dataclasses.dataclass
class ResumeState:
    """Where training goes on from, and what was found on the way.

    start_epoch and start_step are where the loop starts (0 when fresh);
    resumed says whether a checkpoint was loaded; path is the file loaded from
    (its copy in working when it was copied) and info what it holds;
    candidates every checkpoint found, with the reason for each rejection;
    history the checkpoint's history trimmed to the resumed epoch; checkpoint
    the loaded dict ({} when fresh); reason how it was chosen; clock the
    session clock; root the Kaggle root it searched. str() gives a summary,
    and Jupyter shows it as a table.
    """

    start_epoch: int = 0
    start_step: int = 0
    resumed: bool = False
    path: Path | None = None
    info: CheckpointInfo | None = None
    candidates: CandidateList = dataclasses.field(default_factory=lambda: _empty())
    history: Any = None
    checkpoint: dict[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""
    clock: SessionClock = dataclasses.field(default_factory=lambda: SessionClock())
    root: Path | None = None

    def __str__(self) -> str:
        return _summary(self, self.root or _root(None))

    def _repr_html_(self) -> str:
        root = self.root or _root(None)
        chosen = self.info.path if self.info is not None else None
        table = _html_table(self.candidates, root, chosen)
        return f"<p>{html.escape(_decision(self))}</p>{table}"


_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DataParallel/DDP "module." and torch.compile "_orig_mod." prefixes."""
    clean = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        clean[name] = value
    return clean


def _model_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in _MODEL_KEYS:
        state = checkpoint.get(key)
        if isinstance(state, Mapping):
            return state
    return None


def _standard_keys(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A Lightning checkpoint's states under this module's keys (others as they are).

    Lightning keeps the model under "state_dict", the optimizers under
    "optimizer_states" and the schedulers under "lr_schedulers": the first of
    each is the one resumed into a plain optimizer and scheduler.
    """
    standard = dict(checkpoint)
    if not _is_lightning([str(key) for key in checkpoint]):
        return standard
    for key, name in (
        ("optimizer_states", "optimizer_state_dict"),
        ("lr_schedulers", "scheduler_state_dict"),
    ):
        states = checkpoint.get(key)
        if isinstance(states, list) and states and name not in standard:
            standard[name] = states[0]
    if "global_step" in checkpoint and "step" not in standard:
        standard["step"] = checkpoint["global_step"]
    return standard


def _match_keys(saved: Mapping[str, Any], target: Iterable[str]) -> dict[str, Any]:
    """Saved state keys renamed to the model's where only a prefix differs.

    Handles "module." (DataParallel, DDP) and "_orig_mod." (torch.compile),
    and one attribute prefix on either side: a LightningModule's "net." or
    "model." around the plain module it holds.
    """
    state = _strip_prefixes(saved)
    wanted = set(target)
    if not wanted or set(state) == wanted:
        return state
    for head in sorted({key.split(".", 1)[0] for key in state if "." in key}):
        prefix = head + "."
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(inner) == wanted:
            return inner
    for head in sorted({key.split(".", 1)[0] for key in wanted if "." in key}):
        outer = {f"{head}.{k}": v for k, v in state.items()}
        if set(outer) == wanted:
            return outer
    return state


def _fill_tied(state: dict[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """Add the names of tied weights a checkpoint left out (lm_head = embeddings).

    Hugging Face saves one tensor for weights the model shares; the model's
    state dict names it twice. A missing name whose tensor is shared with a
    saved one gets that saved tensor.
    """
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for key, value in target.items():
        if isinstance(value, torch.Tensor) and not value.is_meta and value.numel():
            pointer = value.untyped_storage().data_ptr()
            place = (pointer, int(value.storage_offset()), tuple(value.shape))
            groups.setdefault(place, []).append(key)
    filled = dict(state)
    for names in groups.values():
        present = [name for name in names if name in filled]
        for name in names:
            if name not in filled and present:
                filled[name] = filled[present[0]]
    return filled


def _check_fit(
    checkpoint: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    strict: bool,
) -> str | None:
    """Why the checkpoint cannot load into model and optimizer, or None."""
    saved = _model_state(checkpoint)
    if saved is None:
        return "Does not fit the model: no model state dict in the checkpoint"
    target = _unwrap(model).state_dict()
    state = _fill_tied(_match_keys(saved, target), target)
    missing = sorted(target.keys() - state.keys())
    unexpected = sorted(state.keys() - target.keys())
    if target and not target.keys() & state.keys():
        return (
            "Does not fit the model: no parameter name in common (the "
            f"checkpoint has {sorted(state)[:3]}, the model {sorted(target)[:3]})"
        )
    if strict and (missing or unexpected):
        return (
            f"Does not fit the model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]} (strict=False "
            "loads the keys that match)"
        )
    for key in sorted(target.keys() & state.keys()):
        have, want = state[key], target[key]
        if isinstance(have, torch.Tensor) and have.shape != want.shape:
            return (
                f"Does not fit the model: {key!r} has shape {tuple(have.shape)} "
                f"in the checkpoint, {tuple(want.shape)} in the model"
            )

    saved_optimizer = checkpoint.get("optimizer_state_dict")
    if optimizer is not None and isinstance(saved_optimizer, Mapping):
        groups = saved_optimizer.get("param_groups") or []
        own = optimizer.state_dict()["param_groups"]
        sizes = [len(group.get("params", ())) for group in groups]
        own_sizes = [len(group["params"]) for group in own]
        if sizes != own_sizes:
            return (
                f"Does not fit the optimizer: parameter groups of sizes {sizes} "
                f"in the checkpoint, {own_sizes} in the optimizer"
            )
    return None


def _verify_zip(path: Path) -> str | None:
    """Check every record's CRC-32; why the file is damaged, or None.

    The records of a torch checkpoint are stored, not compressed, so each is
    read into one reused buffer and checked with zlib.crc32, which lets go of
    the GIL: the check runs beside torch.load at the speed of the CRC.
    """
    if not _is_zip(path):
        return None
    name = ""
    try:
        with open(path, "rb") as f:
            with zipfile.ZipFile(f) as archive:
                members = sorted(archive.infolist(), key=lambda m: m.header_offset)
                for member in members:
                    name = member.filename.split("/", 1)[-1]
                    if member.compress_type != zipfile.ZIP_STORED:
                        with archive.open(member) as record:
                            while record.read(_CHUNK):  # zipfile checks the CRC
                                pass
            buffer = memoryview(bytearray(8 * _CHUNK))
            for member in members:
                name = member.filename.split("/", 1)[-1]
                stored = member.compress_type == zipfile.ZIP_STORED
                if stored and _record_crc(f.fileno(), member, buffer) != member.CRC:
                    raise zipfile.BadZipFile(f"Bad CRC-32 for {name}")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as e:
        where = f"record {name!r} " if name else ""
        return (
            f"Integrity error: {where}fails its check ({type(e).__name__}); the "
            "file is damaged, save or upload it again"
        )
    return None


def _record_crc(fd: int, member: zipfile.ZipInfo, buffer: memoryview) -> int:
    """The CRC-32 of a stored record's bytes, read where they lie."""
    header = os.pread(fd, 30, member.header_offset)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {member.filename}")
    position = member.header_offset + 30 + sum(struct.unpack("<HH", header[26:30]))
    left = member.compress_size
    crc = 0
    while left:
        got = os.preadv(fd, [buffer[: min(left, len(buffer))]], position)
        if got == 0:
            raise EOFError(f"{member.filename} ends early")
        crc = zlib.crc32(buffer[:got], crc)
        position += got
        left -= got
    return crc


def _apply(
    checkpoint: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    scaler: Any,
    strict: bool,
) -> str | None:
    """Load each saved state into its object; why it failed, or None.

    The optimizer, scheduler and scaler load first, each kept as it was when
    one of them fails; the model loads last, its keys and shapes checked
    already, so a failed candidate never leaves a model half-loaded.
    """
    parts = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    before = {name: deepcopy(p.state_dict()) for name, p in parts.items() if p}
    for name, part in parts.items():
        if part is None:
            continue
        saved = checkpoint.get(f"{name}_state_dict")
        if saved is None or (name == "scaler" and not saved):
            _log.warning(
                "No %s state in the checkpoint: the %s starts fresh", name, name
            )
            continue
        try:
            part.load_state_dict(saved)
        except Exception as e:
            for restored, state in before.items():
                parts[restored].load_state_dict(state)
            return f"Does not fit the {name}: {type(e).__name__}: {e}"

    target = _unwrap(model)
    own = target.state_dict()
    state = _fill_tied(_match_keys(_model_state(checkpoint) or {}, own), own)
    target.load_state_dict(state, strict=strict)
    rng = checkpoint.get("rng_state")
    if isinstance(rng, Mapping):
        _set_rng_state(rng)
    return None


def _trim_history(history: Any, epoch: int | None) -> Any:
    """Keep the history entries of epochs up to the resumed one."""
    if epoch is None or history is None:
        return history
    if isinstance(history, list):
        if all(isinstance(item, Mapping) and "epoch" in item for item in history):
            return [item for item in history if _epoch_of(item) <= epoch]
        return history[: epoch + 1]
    if isinstance(history, Mapping):
        return {
            key: value[: epoch + 1] if isinstance(value, list) else value
            for key, value in history.items()
        }
    return history


def _epoch_of(entry: Mapping[str, Any]) -> float:
    value = _scalar(entry["epoch"])
    return -1 if value is None else value


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _logging_configured() -> bool:
    """Whether our INFO lines reach a handler someone configured."""
    if not _log.isEnabledFor(logging.INFO):
        return False
    logger: logging.Logger | None = _log
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def _table(
    candidates: Sequence[CheckpointInfo], root: Path, chosen: Path | None
) -> str:
    """The candidates as a plain text table, the chosen one marked with *."""
    rows = _rows(candidates, root, chosen)
    columns = _columns(candidates)
    widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in columns}
    lines = [
        "  ".join(cell.ljust(widths[c]) for c, cell in zip(columns, cells, strict=True))
        for cells in [columns, *([row[c] for c in columns] for row in rows)]
    ]
    return "\n".join(line.rstrip() for line in lines)


def resume(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    pattern: str | Sequence[str] | None = None,
    prefer_metric: str | None = None,
    mode: str | None = None,
    root: str | os.PathLike[str] | None = None,
    map_location: Any = None,
    strict: bool = True,
    copy: bool = True,
    required_keys: Sequence[str] | None = None,
    verbose: bool = True,
    verify: bool = True,
    safe_globals: Iterable[Any] | None = None,
    trusted: bool = False,
    extra_sources: Iterable[str | os.PathLike[str] | tuple[Any, int]] | None = None,
) -> ResumeState:
    """Find the best checkpoint and restore training from it.

    Finds and ranks every checkpoint (see find_best_checkpoint_across_sources),
    copies the chosen one into root/working/checkpoints when it lies in an
    input (copy=True), checks its integrity (verify=True) and that it fits,
    then loads model, optimizer, scheduler, scaler and RNG states. A candidate
    that fails falls back to the next one; when none loads, training starts
    fresh and the reason for each candidate is logged.

    Args:
        model, optimizer, scheduler, scaler: what to restore (model required).
        pattern: a file name or glob, or several; default *.pth, *.pt, *.ckpt.
        prefer_metric, mode: how to choose, as for
            find_best_checkpoint_across_sources.
        root: the Kaggle root; default $KAGGLE_RESUME_ROOT, else "/kaggle".
        map_location: where tensors go; default the device of the model.
        strict: passed to load_state_dict; strict=False loads matching keys.
        copy: copy a checkpoint from an input into working first.
        required_keys: as for get_checkpoint_info.
        verbose: print a summary table when logging is not configured;
            False prints nothing at all.
        verify: check the zip CRC-32s before loading (about 0.4 s per GB).
        safe_globals, trusted: as for get_checkpoint_info.
        extra_sources: as for find_checkpoint_locations.

    Returns:
        A ResumeState: start_epoch (0 when fresh), start_step, resumed, path,
        info, candidates, history (trimmed to the resumed epoch), the loaded
        checkpoint dict ({} when fresh), and clock, the session's
        SessionClock: call state.clock.lap() after each epoch's save and stop
        when state.clock.should_stop(), so the session ends cleanly and keeps
        its output.
    """
    base = _root(root)
    device = map_location if map_location is not None else _model_device(model)
    options: dict[str, Any] = dict(
        pattern=pattern,
        prefer_metric=prefer_metric,
        mode=mode,
        map_location=device,
        strict=strict,
        copy=copy,
        required_keys=required_keys,
        verify=verify,
        safe_globals=safe_globals,
        trusted=trusted,
        extra_sources=extra_sources,
    )
    if _rank_and_size()[1] > 1:
        state = _resume_distributed(model, optimizer, scheduler, scaler, base, options)
    else:
        state = _resume_here(model, optimizer, scheduler, scaler, base, **options)
    if verbose and _rank_and_size()[0] == 0 and not _logging_configured():
        print(_summary(state, base))
    return state


def _resume_here(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    scaler: Any,
    base: Path,
    *,
    pattern: str | Sequence[str] | None,
    prefer_metric: str | None,
    mode: str | None,
    map_location: Any,
    strict: bool,
    copy: bool,
    required_keys: Sequence[str] | None,
    verify: bool,
    safe_globals: Iterable[Any] | None,
    trusted: bool,
    extra_sources: Iterable[Any] | None,
) -> ResumeState:
    """Resume in this process alone: scan, rank, try each candidate, apply."""
    candidates = _scan(
        base, pattern, required_keys, safe_globals, trusted, extra_sources
    )
    ranked, how = _rank(candidates, prefer_metric, mode)
    state = ResumeState(candidates=candidates, root=base)

    for info in ranked:
        tried = _try_candidate(
            info,
            base,
            (model, optimizer, scheduler, scaler),
            strict=strict,
            copy=copy,
            verify=verify,
            map_location=map_location,
            required_keys=required_keys,
            safe_globals=safe_globals,
            trusted=trusted,
        )
        if isinstance(tried, str):
            info.reject(tried)
            _log.warning("Cannot resume from %r: %s; trying the next", info.path, tried)
            continue
        checkpoint, real, used = tried
        for field in dataclasses.fields(real):  # what was loaded, not the record
            setattr(info, field.name, getattr(real, field.name))
        epoch = info.epoch
        state = ResumeState(
            start_epoch=0 if epoch is None else epoch + 1,
            start_step=0 if info.step is None else info.step + 1,
            resumed=True,
            path=used,
            info=info,
            candidates=candidates,
            history=checkpoint.get("history")
            if info.format == "hf_trainer"  # its log has epochs of its own
            else _trim_history(checkpoint.get("history"), epoch),
            checkpoint=dict(checkpoint),
            reason=f"chosen {how}",
            root=base,
        )
        candidates.chosen = info.path
        _log.info(
            "Resuming from %r (%s, epoch %s): training starts at epoch %d",
            used,
            info.source,
            epoch,
            state.start_epoch,
        )
        break
    else:
        _log.info(
            "No checkpoint could be resumed from (%d candidates): starting fresh",
            len(candidates),
        )
    return state


def _rank_and_size() -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) without torch.distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resume_distributed(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    scaler: Any,
    base: Path,
    options: dict[str, Any],
) -> ResumeState:
    """Rank 0 finds, copies and loads; the others load what it chose.

    Every rank calls this. Rank 0 sends its outcome (or its error) to the
    others whatever happens, so no rank waits forever.
    """
    dist = torch.distributed
    rank = dist.get_rank()
    outcome: list[Any] = [None]
    if rank == 0:
        try:
            state = _resume_here(model, optimizer, scheduler, scaler, base, **options)
            outcome = [("ok", dataclasses.replace(state, checkpoint={}))]
        except Exception as e:
            outcome = [("error", f"{type(e).__name__}: {e}")]
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    kind, shared = outcome[0]
    if kind == "error":
        raise RuntimeError(f"kaggle_resume: rank 0 could not resume: {shared}")
    if rank == 0:
        return state
    assert isinstance(shared, ResumeState)
    if not shared.resumed or shared.path is None:
        return shared

    path = shared.path
    checkpoint = _standard_keys(
        _load_candidate(
            path,
            base,
            options["map_location"],
            options["safe_globals"],
            options["trusted"],
        )
    )
    reason = _check_fit(checkpoint, model, optimizer, options["strict"])
    if reason is None:
        strict = options["strict"]
        reason = _apply(checkpoint, model, optimizer, scheduler, scaler, strict)
    if reason is not None:
        raise RuntimeError(f"kaggle_resume: rank {rank} cannot load {path!r}: {reason}")
    return dataclasses.replace(shared, checkpoint=dict(checkpoint))


def _try_candidate(
    info: CheckpointInfo,
    base: Path,
    targets: tuple[torch.nn.Module, torch.optim.Optimizer | None, Any, Any],
    *,
    strict: bool,
    copy: bool,
    verify: bool,
    map_location: Any,
    required_keys: Sequence[str] | None,
    safe_globals: Iterable[Any] | None,
    trusted: bool,
) -> tuple[Any, CheckpointInfo, Path] | str:
    """Load one candidate into the targets: (checkpoint, info, path) or a reason.

    The copy into working and the CRC check run in threads while the source
    loads (the copy in the kernel, the CRC in zlib, neither holding the GIL);
    nothing is applied before the CRC check passes. The source is loaded
    rather than the copy: a read-only input can be memory-mapped safely. When
    the candidate fails, its copy is removed again and what it displaced is
    put back.
    """
    src = info.path
    model, optimizer, scheduler, scaler = targets
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        copying = None
        if copy and not _is_under(src, base / "working"):
            if (base / "working").is_dir():
                copying = pool.submit(_copy, src, base)
            else:
                _log.info("Not copied: %s does not exist", base / "working")
        checking = None
        if verify and src.is_file():
            checking = pool.submit(_verify_zip, src)

        reason: str | None = None
        checkpoint: Any = None
        real = info
        try:
            checkpoint = _load_candidate(src, base, map_location, safe_globals, trusted)
        except _LoadError as e:
            reason = str(e)
        except OSError as e:
            reason = f"Load error: cannot read the file: {e.strerror or e}"
        except Exception as e:  # an odd file must not stop the fallback
            reason = f"Load error: {type(e).__name__}: {e}"
        if reason is None and not src.is_dir():  # a folder was judged from its files
            real = _info_from_checkpoint(info, checkpoint, required_keys)
            reason = real.error
        if reason is None:
            checkpoint = _standard_keys(checkpoint)
            reason = _check_fit(checkpoint, model, optimizer, strict)
        if reason is None and checking is not None:
            reason = checking.result()
        if reason is None:
            reason = _apply(checkpoint, model, optimizer, scheduler, scaler, strict)

        used = src
        if copying is not None:
            try:
                dst, backup, created = copying.result()
            except OSError as e:
                _log.warning("Resuming from %r in place: the copy failed: %s", src, e)
            else:
                if reason is not None and created:
                    _undo_copy(dst, backup)
                else:
                    used = dst
    if reason is not None:
        return reason
    return checkpoint, real, used


def _load_candidate(
    src: Path,
    base: Path,
    map_location: Any,
    safe_globals: Iterable[Any] | None,
    trusted: bool,
) -> Any:
    """Load a checkpoint file or a Hugging Face checkpoint folder."""
    if src.is_dir():
        return _load_hf(
            src, map_location=map_location, safe_globals=safe_globals, trusted=trusted
        )
    return _load(
        src,
        map_location=map_location,
        mmap=_is_under(src, base / "input"),
        safe_globals=safe_globals,
        trusted=trusted,
    )


def _undo_copy(copied: Path, backup: Path | None) -> None:
    """Remove a copy that failed to load, and put back what it displaced."""
    with contextlib.suppress(OSError):
        if copied.is_dir():
            shutil.rmtree(copied)
        else:
            copied.unlink()
        _log.info("Removed the copy %r: it failed to load", copied)
    if backup is not None:
        with contextlib.suppress(OSError):
            os.replace(backup, copied)


def _decision(state: ResumeState) -> str:
    if state.resumed and state.info is not None:
        text = (
            f"Resumed from {_show(state.path or '')!r} ({state.info.source}, "
            f"epoch {state.info.epoch}, {state.reason}): training starts at "
            f"epoch {state.start_epoch}"
        )
    else:
        text = "No valid checkpoint: training starts fresh at epoch 0"
    left = state.clock.time_left()
    if not math.isinf(left):
        text += f". Session time left: {left / 3600:.1f} h"
    return text


def _summary(state: ResumeState, root: Path) -> str:
    chosen = state.info.path if state.info is not None else None
    lines = ["kaggle_resume: checkpoint candidates"]
    if state.candidates:
        lines.append(_table(state.candidates, root, chosen))
    else:
        lines.append(f"  (no checkpoint files under {_show(root)!r})")
    lines.append(_decision(state))
    return "\n".join(lines)


# --- Session clock ---------------------------------------------------------

_KAGGLE_HOURS = 12.0  # CPU and GPU sessions
_TPU_HOURS = 9.0


def _start_time(pid: str) -> float | None:
    """When a process started, in seconds since the epoch, from /proc (Linux)."""
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class SessionClock:
    """How long this Kaggle session has left, and whether another epoch fits.

    On Kaggle (KAGGLE_KERNEL_RUN_TYPE is set) the limit is 9 hours when a TPU
    is attached (TPU_NAME or ISTPUVM), else 12 hours, counted from the start
    of the container. Elsewhere there is no limit unless one is given, so
    should_stop() never stops a run. Call lap() at the end of each epoch::

        clock = SessionClock()
        for epoch in range(start, EPOCHS):
            train_one_epoch()
            save_checkpoint(model=model, epoch=epoch)
            clock.lap()
            if clock.should_stop():
                break  # the session ends cleanly and keeps its output

    Args:
        limit: the session length in seconds; default Kaggle's, see above.
        start: when the session started (seconds, on the clock's scale);
            default the container's start on Kaggle, else this process's.
        clock: the time source, seconds as a float; default time.time.
    """

    def __init__(
        self,
        limit: float | None = None,
        *,
        start: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))
        if limit is None and on_kaggle:
            tpu = os.environ.get("TPU_NAME") or os.environ.get("ISTPUVM")
            limit = (_TPU_HOURS if tpu else _KAGGLE_HOURS) * 3600
        self.limit = limit
        self._clock = clock
        if start is None and clock is time.time:
            start = (_start_time("1") if on_kaggle else None) or _start_time("self")
        self.start = clock() if start is None else start
        self.durations: list[float] = []
        self._lap_start = clock()

    def elapsed(self) -> float:
        """Seconds since the session started."""
        return self._clock() - self.start

    def time_left(self) -> float:
        """Seconds until the session is killed; infinity without a limit."""
        if self.limit is None:
            return math.inf
        return self.limit - self.elapsed()

    def lap(self) -> float:
        """Mark the end of an epoch; return how long it took."""
        now = self._clock()
        duration = now - self._lap_start
        self._lap_start = now
        self.durations.append(duration)
        return duration

    def expected_epoch(self) -> float:
        """The time the next epoch is expected to take, from every epoch so far.

        The larger of the mean and the last duration: one slow first epoch
        (compilation, caching) does not dominate, and a slowdown is not missed.
        """
        if not self.durations:
            return 0.0
        return max(sum(self.durations) / len(self.durations), self.durations[-1])

    def should_stop(self, margin: float = 600.0) -> bool:
        """Whether another epoch, plus margin seconds to save, would not fit."""
        if self.limit is None:
            return False
        return self.time_left() - margin < self.expected_epoch()

    def __repr__(self) -> str:
        left = self.time_left()
        shown = "no limit" if math.isinf(left) else f"{left / 3600:.2f} h left"
        return f"SessionClock({shown}, {len(self.durations)} epochs timed)"


# --- Publish ---------------------------------------------------------------

_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_METADATA_NAME = "dataset-metadata.json"


def _check_dataset(dataset: str) -> tuple[str, str]:
    """Split OWNER/SLUG, refusing what Kaggle would refuse, with the reason."""
    owner, sep, slug = dataset.partition("/")
    if not sep or "/" in slug:
        raise ValueError(
            f"dataset must be OWNER/SLUG, e.g. 'you/my-run', not {dataset!r}"
        )
    if not _OWNER.fullmatch(owner):
        raise ValueError(
            f"owner {owner!r} is not a Kaggle user name: letters, digits, '-' and "
            "'_' only"
        )
    if not 6 <= len(slug) <= 50:
        raise ValueError(
            f"slug {slug!r} has {len(slug)} characters: Kaggle needs 6 to 50"
        )
    if not _SLUG.fullmatch(slug) or "--" in slug:
        raise ValueError(
            f"slug {slug!r} is refused by Kaggle: lowercase letters, digits and "
            "single hyphens only, starting and ending with a letter or digit"
        )
    return owner, slug


def publish(
    dataset: str,
    *,
    message: str | None = None,
    folder: str | os.PathLike[str] | None = None,
    title: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Prepare a folder of checkpoints for upload as a Kaggle dataset.

    Writes dataset-metadata.json into the folder and returns the kaggle CLI
    commands that create the dataset (first time) or add a version to it.
    Needs no network. The next session attaches the dataset and resume()
    finds the checkpoints in it.

    Args:
        dataset: "OWNER/SLUG"; the slug must be 6-50 lowercase letters,
            digits and hyphens.
        message: the version notes; default names the newest epoch found.
        folder: what to publish; default root/working/checkpoints.
        title: the dataset title (6-50 characters); default from the slug.
        root: the Kaggle root; default $KAGGLE_RESUME_ROOT, else "/kaggle".

    Returns:
        [create command, version command].

    Raises:
        ValueError: a dataset name or title Kaggle would refuse, or a folder
            under the read-only root/input.
        FileNotFoundError: the folder does not exist.
    """
    owner, slug = _check_dataset(dataset)
    base = _root(root)
    target = Path(folder) if folder is not None else base / "working" / "checkpoints"
    if _is_under(target, base / "input"):
        raise ValueError(f"Cannot publish from {_show(target)!r}: it is read-only")
    if not target.is_dir():
        raise FileNotFoundError(
            errno.ENOENT,
            f"No folder {_show(target)!r} to publish: save a checkpoint first",
        )
    name = title if title is not None else slug.replace("-", " ").title()
    if not 6 <= len(name) <= 50:
        raise ValueError(
            f"title {name!r} has {len(name)} characters: Kaggle needs 6-50"
        )

    metadata = {
        "title": name,
        "id": f"{owner}/{slug}",
        "licenses": [{"name": "CC0-1.0"}],
    }
    text = json.dumps(metadata, indent=2) + "\n"
    meta_path = target / _METADATA_NAME
    if meta_path.exists() and meta_path.read_text(errors="replace") != text:
        kept = _backup_name(meta_path)
        os.replace(meta_path, kept)
        _log.warning("Kept the previous %s as %r", _METADATA_NAME, kept.name)
    with _atomic_target(meta_path, len(text), "write dataset metadata") as temp:
        temp.write_text(text)

    if message is None:
        files = _walk(target, _matcher(None), _MAX_DEPTH, set())
        newest = _series_order(files)
        epoch = next((i.epoch for i in newest if i.epoch is not None), None)
        message = f"epoch {epoch}" if epoch is not None else "checkpoints"
    has_folders = any(entry.is_dir() for entry in target.iterdir())
    mode = " --dir-mode zip" if has_folders else ""
    quoted = shlex.quote(os.fspath(target))
    return [
        f"kaggle datasets create -p {quoted}{mode}",
        f"kaggle datasets version -p {quoted} -m {shlex.quote(message)}{mode}",
    ]


# --- Display ---------------------------------------------------------------


def _rows(
    candidates: Sequence[CheckpointInfo], root: Path, chosen: Path | None
) -> list[dict[str, str]]:
    """One dict of display strings per candidate."""
    rows = []
    for candidate in candidates:
        try:
            location = os.path.relpath(candidate.path, root)
        except ValueError:
            location = os.fspath(candidate.path)
        rows.append(
            {
                "": "*" if chosen is not None and candidate.path == chosen else "",
                "location": _show(location),
                "source": candidate.source,
                "format": candidate.format,
                "epoch": "-" if candidate.epoch is None else str(candidate.epoch),
                "step": "-" if candidate.step is None else str(candidate.step),
                "accuracy": "-"
                if candidate.accuracy is None
                else f"{candidate.accuracy:.4f}",
                "size": _format_bytes(candidate.size_bytes),
                "valid": "yes" if candidate.is_valid else "no",
                "reason": candidate.error or "",
            }
        )
    return rows


def _columns(candidates: Sequence[CheckpointInfo]) -> list[str]:
    """The table's columns; "format" only when not every candidate is torch's."""
    columns = ["", "location", "source", "epoch", "step", "accuracy", "size"]
    columns += ["valid", "reason"]
    if any(c.format != "torch" for c in candidates):
        columns.insert(3, "format")
    return columns


def _html_table(
    candidates: Sequence[CheckpointInfo], root: Path, chosen: Path | None
) -> str:
    """The candidates as an HTML table, the chosen row marked and in bold."""
    rows = _rows(candidates, root, chosen)
    columns = _columns(candidates)
    head = "".join(f"<th>{html.escape(c or 'chosen')}</th>" for c in columns)
    body = []
    for row in rows:
        style = ' style="font-weight:bold"' if row[""] else ""
        cells = "".join(
            f"<td>{html.escape('✔' if c == '' and row[c] else row[c])}</td>"
            for c in columns
        )
        body.append(f"<tr{style}>{cells}</tr>")
    return (
        '<table class="kaggle-resume"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _empty() -> CandidateList:
    return CandidateList()


class CandidateList(list[CheckpointInfo]):
    """The candidates of a scan: a list that shows itself as a table.

    In Jupyter it renders as an HTML table; str() gives a plain table.
    """

    def __init__(
        self,
        candidates: Iterable[CheckpointInfo] = (),
        *,
        root: str | os.PathLike[str] | None = None,
        chosen: Path | None = None,
    ) -> None:
        super().__init__(candidates)
        self.root = _root(root)
        self.chosen = chosen

    def __str__(self) -> str:
        return _table(self, self.root, self.chosen)

    def _repr_html_(self) -> str:
        return _html_table(self, self.root, self.chosen)


# --- Command line ----------------------------------------------------------


def _cmd_scan(args: argparse.Namespace) -> int:
    root = _root(args.root)
    try:
        path, info, candidates = find_best_checkpoint_across_sources(
            args.metric, mode=args.mode, root=root, patterns=args.pattern
        )
    except ValueError as e:
        print(f"kaggle_resume scan: {e}", file=sys.stderr)
        return 2
    print(f"Checkpoints under {_show(root)!r}:")
    if candidates:
        print(_table(candidates, root, path))
    else:
        print("  (none found)")
    if path is None or info is None:
        print("No valid checkpoint.")
        return 1
    print(
        f"Best: {_show(path)!r} ({info.source}, epoch {info.epoch}, "
        f"accuracy {info.accuracy}); resume would start at epoch "
        f"{0 if info.epoch is None else info.epoch + 1}"
    )
    return 0


_DEMO_HOURS_PER_EPOCH = 1.1
_DEMO_LIMIT_HOURS = 4.0


def _demo_session(
    number: int, root: Path, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """One simulated Kaggle session: resume, train until the clock says stop."""
    inputs, labels = data
    print(f"\n=== Session {number} ===")
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    state = resume(model, optimizer, scheduler, root=root)
    history = state.history or []
    if state.resumed:
        print(f"Session {number} resumed at epoch {state.start_epoch}")
    else:
        print(f"Session {number} starts fresh at epoch 0")

    # Simulated time: each epoch "takes" 1.1 hours of a 4-hour session.
    now = [0.0]
    clock = SessionClock(_DEMO_LIMIT_HOURS * 3600, start=0.0, clock=lambda: now[0])
    for epoch in range(state.start_epoch, 1000):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
        history.append({"epoch": epoch, "loss": loss.item(), "accuracy": accuracy})
        save_checkpoint(
            f"checkpoint_{epoch:04d}.pth",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            epoch=epoch,
            step=(epoch + 1) * 10 - 1,
            accuracy=accuracy,
            metrics={"loss": loss.item()},
            history=history,
            root=root,
            keep_last=2,
            keep_best="accuracy",
        )
        now[0] += _DEMO_HOURS_PER_EPOCH * 3600
        clock.lap()
        print(f"  epoch {epoch}: loss {loss.item():.3f}, accuracy {accuracy:.3f}")
        if clock.should_stop(margin=1800):
            left = clock.time_left() / 3600
            print(
                f"  {left:.1f} h left, an epoch takes {_DEMO_HOURS_PER_EPOCH} h: "
                "stopping cleanly so the session keeps its output"
            )
            break
    kept = sorted(p.name for p in (root / "working" / "checkpoints").glob("*.pth"))
    print(f"  history holds {len(history)} epochs; kept (keep_last=2): {kept}")


def _demo_upload(root: Path, dataset: str, folder: Path) -> None:
    """What the user does between sessions: publish the output, attach it."""
    for command in publish(dataset, root=root):
        print(f"  $ {command}")
    shutil.copytree(root / "working" / "checkpoints", folder / "checkpoints")
    shutil.rmtree(root / "working")
    (root / "working").mkdir()
    for path in folder.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    print(f"  (dataset {dataset} attached as {_show(folder.relative_to(root))})")


def _cmd_demo(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if args.root is None:
            temp = stack.enter_context(tempfile.TemporaryDirectory())
            root = Path(temp) / "kaggle"
        else:
            root = Path(args.root)
        (root / "working").mkdir(parents=True, exist_ok=True)
        (root / "input").mkdir(exist_ok=True)
        print(f"A simulated Kaggle tree in {_show(root)}: three sessions")
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(256, 4, generator=generator)
        labels = (inputs[:, 0] + inputs[:, 1] > 0).long()
        torch.manual_seed(0)
        data = (inputs, labels)

        _demo_session(1, root, data)
        _demo_upload(root, "you/resume-demo-run1", root / "input" / "run1")
        _demo_session(2, root, data)
        run2 = root / "input" / "datasets" / "you" / "resume-demo-run2"
        _demo_upload(root, "you/resume-demo-run2", run2)
        print("\nSession 3 has both runs attached: run1 and the newer run2.")
        _demo_session(3, root, data)
        if args.root is None:
            for path in (root / "input").rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
    print("\nDone: each session went on at epoch N+1 of the one before.")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    try:
        commands = publish(
            args.dataset,
            message=args.message,
            folder=args.folder,
            title=args.title,
            root=args.root,
        )
    except (ValueError, OSError) as e:
        print(f"kaggle_resume publish: {e}", file=sys.stderr)
        return 2
    folder = args.folder or _root(args.root) / "working" / "checkpoints"
    print(f"Wrote {_show(Path(folder) / _METADATA_NAME)}. Then run, the first time:")
    print(f"  {commands[0]}")
    print("and for each later version:")
    print(f"  {commands[1]}")
    print("Attach the dataset to the next session: resume() finds it there.")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaggle_resume.py",
        description="Find, check and choose PyTorch checkpoints across Kaggle "
        "sessions.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    scan = commands.add_parser(
        "scan", help="list every checkpoint found and the one resume would take"
    )
    scan.add_argument(
        "--root", help="Kaggle root (default $KAGGLE_RESUME_ROOT or /kaggle)"
    )
    scan.add_argument(
        "--pattern", action="append", help="file name or glob; repeat for several"
    )
    scan.add_argument("--metric", help="choose by this metric, or 'epoch'")
    scan.add_argument("--mode", choices=("min", "max"), help="best is min or max")
    scan.add_argument("-v", "--verbose", action="store_true", help="log each step")
    scan.set_defaults(run=_cmd_scan)

    demo = commands.add_parser(
        "demo", help="run three simulated Kaggle sessions that resume each other"
    )
    demo.add_argument("--root", help="build the tree here (default a temp folder)")
    demo.add_argument("-v", "--verbose", action="store_true", help="log each step")
    demo.set_defaults(run=_cmd_demo)

    publishing = commands.add_parser(
        "publish", help="write dataset-metadata.json and print the kaggle commands"
    )
    publishing.add_argument("--dataset", required=True, help="OWNER/SLUG")
    publishing.add_argument("--message", help="version notes")
    publishing.add_argument(
        "--folder", help="folder to publish (default root/working/checkpoints)"
    )
    publishing.add_argument("--title", help="dataset title (6-50 characters)")
    publishing.add_argument("--root", help="Kaggle root")
    publishing.add_argument("-v", "--verbose", action="store_true", help="log")
    publishing.set_defaults(run=_cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
