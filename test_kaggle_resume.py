"""Tests for kaggle_resume.

Every test builds a fake Kaggle tree (working/, input/...) under tmp_path and
fills it with real torch.save files, so the suite runs anywhere with torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import hashlib
import io
import logging
import math
import os
import pickle
import random
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import types
import zipfile
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kaggle_resume as kr

PATTERNS = ("*.pth", "*.pt", "*.ckpt")
SOURCES = ("working", "input_datasets", "notebook_outputs", "models")
MODULE_FILE = Path(kr.__file__).resolve()
Usage = namedtuple("Usage", "total used free")


# --- factories -------------------------------------------------------------


def make_model(seed: int = 0, out_features: int = 2) -> nn.Linear:
    """Build a tiny model with weights fixed by seed (global RNG untouched)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, out_features)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return model


def write_checkpoint(
    path: Path,
    *,
    epoch: Any = 1,
    model: nn.Module | None = None,
    drop: tuple[str, ...] = (),
    **keys: Any,
) -> Path:
    """Write a checkpoint dict with torch.save, as a training script does."""
    if model is None:
        model = make_model()
    ckpt: dict[str, Any] = {"epoch": epoch, "model_state_dict": model.state_dict()}
    ckpt.update(keys)
    for key in drop:
        ckpt.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


@dataclasses.dataclass
class KaggleTree:
    """A fake /kaggle: root/working and root/input."""

    root: Path

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def checkpoints(self) -> Path:
        return self.working / "checkpoints"

    @property
    def input(self) -> Path:
        return self.root / "input"

    def put(self, rel: str, **keys: Any) -> Path:
        """Write a checkpoint at root/rel."""
        return write_checkpoint(self.root / rel, **keys)

    def put_bytes(self, rel: str, data: bytes) -> Path:
        """Write raw bytes at root/rel."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def new_session(self) -> None:
        """Start a new Kaggle session: working is empty again."""
        shutil.rmtree(self.working)
        self.working.mkdir()

    def upload(self, slug: str) -> None:
        """Turn working/checkpoints into a dataset attached as input/<slug>."""
        shutil.copytree(self.checkpoints, self.input / slug / "checkpoints")


@pytest.fixture
def tree(tmp_path: Path) -> KaggleTree:
    """An empty fake Kaggle tree."""
    kaggle = KaggleTree(tmp_path / "kaggle")
    kaggle.working.mkdir(parents=True)
    kaggle.input.mkdir()
    return kaggle


@pytest.fixture(autouse=True)
def _decoy_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point KAGGLE_RESUME_ROOT at an empty decoy, so root= must be honoured."""
    decoy = tmp_path / "decoy"
    (decoy / "working").mkdir(parents=True)
    (decoy / "input").mkdir()
    monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(decoy))
    return decoy


def resolved(paths: list[Path]) -> list[Path]:
    """Resolve every path, for comparisons that ignore how a path was spelt."""
    return [Path(p).resolve() for p in paths]


def all_found(result: dict[str, list[Path]]) -> list[Path]:
    """Every path found, whatever its source."""
    return resolved([p for paths in result.values() for p in paths])


def matches_pattern(name: str) -> bool:
    """Whether a file name matches a default checkpoint pattern."""
    return any(fnmatch.fnmatch(name, pat) for pat in PATTERNS)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Size, mtime and hash of everything under folder."""
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        digest = ""
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = path.relative_to(folder).as_posix()
        state[key] = (stat.st_size, stat.st_mtime_ns, digest)
    return state


def same_state(a: Any, b: Any) -> bool:
    """Deep equality for state dicts holding tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        pairs = zip(a, b, strict=False)
        return len(a) == len(b) and all(same_state(x, y) for x, y in pairs)
    return bool(a == b)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One deterministic optimizer step."""
    loss = model(torch.ones(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def cpu_scaler(**kwargs: Any) -> Any:
    """A CPU GradScaler, or skip where this torch has none."""
    try:
        return torch.amp.GradScaler("cpu", **kwargs)
    except (AttributeError, TypeError, RuntimeError) as e:
        pytest.skip(f"torch.amp.GradScaler('cpu') unavailable: {e}")


@contextlib.contextmanager
def bare_logging() -> Iterator[None]:
    """Run with the root logger as in a fresh notebook: no handlers at all."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


class Exploit:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


@dataclasses.dataclass
class RunConfig:
    """A user class that weights_only refuses unless allowed."""

    lr: float = 0.1


class Compiled(nn.Module):
    """Stand-in for torch.compile's wrapper: parameters under "_orig_mod."."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._orig_mod(x)


class _Numpy1Pickler(pickle.Pickler):
    """Pickler that names numpy scalars the way numpy 1 did."""

    def __init__(self, file: Any, *args: Any, **kwargs: Any) -> None:
        self._dst = file
        self._buf = io.BytesIO()
        super().__init__(self._buf, *args, **kwargs)

    def dump(self, obj: Any) -> None:
        super().dump(obj)
        data = self._buf.getvalue()
        old, new = b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"
        assert old in data
        self._dst.write(data.replace(old, new))


NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
NUMPY1_PICKLE.Pickler = _Numpy1Pickler  # type: ignore[attr-defined]


# --- public surface --------------------------------------------------------


class TestPublicSurface:
    def test_public_names_exported(self) -> None:
        """__all__ is sorted (plain or isort-style) and lists the public API."""
        expected = {
            "CheckpointInfo",
            "ResumeState",
            "copy_checkpoint_to_working",
            "find_best_checkpoint_across_sources",
            "find_checkpoint_locations",
            "get_checkpoint_info",
            "resume",
            "save_checkpoint",
        }
        assert expected <= set(kr.__all__)
        names = list(kr.__all__)
        isort_style = sorted(
            names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
        )
        assert names in (sorted(names), isort_style)
        assert isinstance(kr.__version__, str) and kr.__version__

    def test_checkpoint_info_fields(self) -> None:
        """CheckpointInfo is a dataclass with the fields the issue names."""
        assert dataclasses.is_dataclass(kr.CheckpointInfo)
        names = {f.name for f in dataclasses.fields(kr.CheckpointInfo)}
        assert {
            "path",
            "source",
            "priority",
            "epoch",
            "step",
            "accuracy",
            "metrics",
            "is_valid",
            "error",
            "size_bytes",
            "mtime",
        } <= names


# --- discovery -------------------------------------------------------------


LAYOUTS = [
    ("working/checkpoints/a.pth", "working"),
    ("working/a.pth", "working"),
    ("working/checkpoints/run/a.pth", "working"),
    ("input/my-run/a.pth", "input_datasets"),
    ("input/my-run/checkpoints/a.pth", "input_datasets"),
    ("input/my-run/run1/checkpoints/a.pth", "input_datasets"),
    ("input/d/owner/my-run/a.pth", "input_datasets"),
    ("input/datasets/owner/my-run/a.pth", "input_datasets"),
    ("input/datasets/owner/my-run/checkpoints/a.pth", "input_datasets"),
    ("input/notebooks/owner/my-nb/a.pth", "notebook_outputs"),
    ("input/notebooks/owner/my-nb/checkpoints/a.pth", "notebook_outputs"),
    ("input/models/owner/my-model/pytorch/default/1/a.pth", "models"),
]


class TestFindCheckpointLocations:
    @pytest.mark.parametrize(("rel", "source"), LAYOUTS)
    def test_layout_found_under_its_source(
        self, tree: KaggleTree, rel: str, source: str
    ) -> None:
        """A checkpoint in each Kaggle layout is listed under its source only."""
        path = tree.put(rel)
        result = kr.find_checkpoint_locations(root=tree.root)
        assert resolved(result[source]) == [path.resolve()]
        assert all_found(result) == [path.resolve()]

    @pytest.mark.parametrize(
        "rel",
        [
            "input/my-run/a/b/c/d/a.pth",
            "input/datasets/owner/my-run/a/b/c/d/a.pth",
            "input/models/owner/m/pytorch/default/1/a/b/c/d/a.pth",
        ],
    )
    def test_four_levels_below_dataset_found(self, tree: KaggleTree, rel: str) -> None:
        """A file four folders below a dataset root is still found."""
        path = tree.put(rel)
        assert all_found(kr.find_checkpoint_locations(root=tree.root)) == [
            path.resolve()
        ]

    @pytest.mark.parametrize(
        "rel",
        [
            "input/competitions/titanic/a.pth",
            "input/competitions/titanic/checkpoints/a.pth",
            "input/my-run/.git/a.pth",
            "input/my-run/.hidden.pth",
            "input/.cache/a.pth",
            "working/.cache/a.pth",
            "working/checkpoints/.hidden.pth",
            "working/other/a.pth",
            "input/my-run/a/b/c/d/e/a.pth",
            "input/datasets/owner/my-run/a/b/c/d/e/a.pth",
            "input/models/owner/m/pytorch/default/1/a/b/c/d/e/a.pth",
        ],
    )
    def test_excluded_place_not_searched(self, tree: KaggleTree, rel: str) -> None:
        """Competitions, hidden entries, other working folders, too deep: skipped."""
        tree.put(rel)
        control = tree.put("input/control/ok.pth")
        assert all_found(kr.find_checkpoint_locations(root=tree.root)) == [
            control.resolve()
        ]

    def test_default_patterns(self, tree: KaggleTree) -> None:
        """*.pth, *.pt and *.ckpt are found; other extensions are not."""
        wanted = [tree.put(f"input/run/{name}") for name in ("a.pth", "b.pt", "c.ckpt")]
        for name in ("d.bin", "e.json", "f.pth.bak", "g.safetensors", "h.pthx"):
            tree.put(f"input/run/{name}")
        result = kr.find_checkpoint_locations(root=tree.root)
        assert sorted(all_found(result)) == sorted(resolved(wanted))

    def test_pattern_name_narrows(self, tree: KaggleTree) -> None:
        """A file name as pattern keeps only files of that name."""
        want = tree.put("input/run/checkpoints/vqvae_pretrained.pth")
        tree.put("input/run/checkpoints/checkpoint_0010.pth")
        tree.put("working/checkpoints/final_model.pth")
        result = kr.find_checkpoint_locations(
            root=tree.root, patterns="vqvae_pretrained.pth"
        )
        assert all_found(result) == [want.resolve()]

    def test_pattern_glob_narrows(self, tree: KaggleTree) -> None:
        """A glob as pattern keeps only matching names."""
        want = [
            tree.put("input/run/checkpoints/checkpoint_0010.pth"),
            tree.put("input/run/checkpoints/checkpoint_0020.pth"),
        ]
        tree.put("input/run/checkpoints/vqvae_pretrained.pth")
        tree.put("input/run/checkpoints/checkpoint_0030.pt")
        result = kr.find_checkpoint_locations(
            root=tree.root, patterns="checkpoint_*.pth"
        )
        assert sorted(all_found(result)) == sorted(resolved(want))

    def test_pattern_list(self, tree: KaggleTree) -> None:
        """A list of patterns keeps names matching any of them."""
        want = [tree.put("input/run/final.pth"), tree.put("input/run/x.safetensors")]
        tree.put("input/run/other.pth")
        result = kr.find_checkpoint_locations(
            root=tree.root, patterns=["final.pth", "*.safetensors"]
        )
        assert sorted(all_found(result)) == sorted(resolved(want))

    def test_each_list_sorted_by_path(self, tree: KaggleTree) -> None:
        """Paths come sorted within each source."""
        for name in ("c.pth", "a.pth", "b.pth"):
            tree.put(f"working/checkpoints/{name}")
        for slug in ("zeta", "alpha", "mid"):
            tree.put(f"input/{slug}/x.pth")
        result = kr.find_checkpoint_locations(root=tree.root)
        for source in ("working", "input_datasets"):
            paths = [Path(p) for p in result[source]]
            assert len(paths) == 3
            assert paths == sorted(paths)

    def test_all_sources_present_in_empty_tree(self, tree: KaggleTree) -> None:
        """An empty tree gives the four sources, each with no path."""
        result = kr.find_checkpoint_locations(root=tree.root)
        assert set(result) == set(SOURCES)
        assert all(paths == [] for paths in result.values())

    def test_missing_root_is_empty(self, tmp_path: Path) -> None:
        """A root that does not exist gives empty lists, not an error."""
        result = kr.find_checkpoint_locations(root=tmp_path / "nowhere")
        assert all_found(result) == []

    def test_root_as_string(self, tree: KaggleTree) -> None:
        """root may be a str."""
        path = tree.put("input/run/a.pth")
        result = kr.find_checkpoint_locations(root=str(tree.root))
        assert all_found(result) == [path.resolve()]

    def test_root_from_env_read_at_call(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """KAGGLE_RESUME_ROOT is read at each call, not at import."""
        first = write_checkpoint(tmp_path / "one" / "working" / "a.pth")
        second = write_checkpoint(tmp_path / "two" / "input" / "run" / "b.pth")
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tmp_path / "one"))
        assert all_found(kr.find_checkpoint_locations()) == [first.resolve()]
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tmp_path / "two"))
        assert all_found(kr.find_checkpoint_locations()) == [second.resolve()]

    def test_symlink_loop_not_followed(self, tree: KaggleTree) -> None:
        """A folder symlink pointing back up is not followed round and round."""
        path = tree.put("input/run/checkpoints/a.pth")
        (tree.input / "run" / "checkpoints" / "loop").symlink_to(tree.input / "run")
        (tree.checkpoints).mkdir()
        (tree.checkpoints / "loop").symlink_to(tree.working)
        result = kr.find_checkpoint_locations(root=tree.root)
        assert all_found(result) == [path.resolve()]

    def test_broken_symlink_does_not_raise(self, tree: KaggleTree) -> None:
        """A dangling symlink named *.pth does not stop the scan."""
        good = tree.put("input/run/good.pth")
        (tree.input / "run" / "broken.pth").symlink_to(tree.root / "gone.pth")
        result = kr.find_checkpoint_locations(root=tree.root)
        assert good.resolve() in all_found(result)
        best, info, _ = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert info is not None and Path(best).resolve() == good.resolve()

    def test_odd_file_names_do_not_raise(self, tree: KaggleTree) -> None:
        """Undecodable or newline names do not stop the scan."""
        good = tree.put("input/run/good.pth")
        folder = os.fsencode(tree.input / "run")
        for name in (b"odd\xff\xfe.pth", b"new\nline.pth"):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(good.read_bytes())
        result = kr.find_checkpoint_locations(root=tree.root)
        assert good.resolve() in all_found(result)
        _, info, _ = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert info is not None and info.is_valid

    def test_unreadable_folder_does_not_raise(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A folder that cannot be listed is skipped; the rest is found."""
        good = tree.put("input/run/good.pth")
        locked = tree.input / "run" / "locked"
        tree.put("input/run/locked/x.pth")
        real_scandir = os.scandir

        def scandir(path: Any = ".") -> Any:
            if Path(os.fsdecode(path)).resolve() == locked.resolve():
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)  # chmod does not stop root
        locked.chmod(0)
        try:
            result = kr.find_checkpoint_locations(root=tree.root)
        finally:
            locked.chmod(0o755)
        assert all_found(result) == [good.resolve()]

    def test_big_data_folder_does_not_hide_checkpoints(self, tree: KaggleTree) -> None:
        """A sibling folder of thousands of images does not hide checkpoints/."""
        images = tree.input / "run" / "images"
        images.mkdir(parents=True)
        for i in range(5100):
            (images / f"{i:05d}.png").touch()
        want = tree.put("input/run/checkpoints/a.pth")
        result = kr.find_checkpoint_locations(root=tree.root)
        assert all_found(result) == [want.resolve()]


# --- inspection ------------------------------------------------------------


def _truncated(path: Path) -> None:
    write_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(7).randbytes(4096))


def _html_page(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"<!DOCTYPE html>\n<html><head><title>Kaggle</title></head>"
        b"<body>Sign in to download this file</body></html>\n"
    )


REJECTIONS: list[tuple[str, Callable[[Path], Any], str]] = [
    ("truncated", _truncated, r"^Load error: "),
    ("random-bytes", _random_bytes, r"^Load error: "),
    ("html-page", _html_page, r"^Load error: "),
    ("empty", lambda p: p.write_bytes(b""), r"^Empty file \(0 bytes\)"),
    ("list", lambda p: torch.save([1, 2, 3], p), r"^Not a checkpoint dict"),
    ("tensor", lambda p: torch.save(torch.zeros(3), p), r"^Not a checkpoint dict"),
    (
        "no-epoch",
        lambda p: write_checkpoint(p, drop=("epoch",)),
        r"^Missing keys: \['epoch'\]",
    ),
    (
        "no-model-state",
        lambda p: write_checkpoint(p, drop=("model_state_dict",)),
        r"^Missing keys: \['model_state_dict'\]",
    ),
    ("epoch-negative", lambda p: write_checkpoint(p, epoch=-3), r"^Invalid epoch: -3"),
    ("epoch-bool", lambda p: write_checkpoint(p, epoch=True), r"^Invalid epoch: True"),
    ("epoch-float", lambda p: write_checkpoint(p, epoch=5.0), r"^Invalid epoch: 5\.0"),
    ("epoch-str", lambda p: write_checkpoint(p, epoch="5"), r"^Invalid epoch: '5'"),
    ("step-negative", lambda p: write_checkpoint(p, step=-1), r"^Invalid step: -1\b"),
    (
        "accuracy-above-1",
        lambda p: write_checkpoint(p, accuracy=1.7),
        r"^Invalid accuracy: 1\.7\b",
    ),
    (
        "accuracy-nan",
        lambda p: write_checkpoint(p, accuracy=float("nan")),
        r"^Invalid accuracy: nan\b",
    ),
    (
        "accuracy-inf",
        lambda p: write_checkpoint(p, accuracy=float("inf")),
        r"^Invalid accuracy: inf\b",
    ),
    (
        "accuracy-negative",
        lambda p: write_checkpoint(p, accuracy=-0.25),
        r"^Invalid accuracy: -0\.25\b",
    ),
    (
        "accuracy-str",
        lambda p: write_checkpoint(p, accuracy="0.9"),
        r"^Invalid accuracy: '0\.9'",
    ),
    (
        "alias-in-percent",
        lambda p: write_checkpoint(p, val_acc=87.5),
        r"^Invalid accuracy: 87\.5\b",
    ),
]


class TestGetCheckpointInfo:
    def test_valid_checkpoint(self, tmp_path: Path) -> None:
        """A good checkpoint reads as valid with its epoch, step, metrics, size."""
        path = write_checkpoint(
            tmp_path / "good.pth", epoch=12, step=3400, accuracy=0.8125, loss=0.25
        )
        info = kr.get_checkpoint_info(str(path))
        assert info.is_valid and info.error is None
        assert Path(info.path).resolve() == path.resolve()
        assert (info.epoch, info.step, info.accuracy) == (12, 3400, 0.8125)
        assert info.metrics["loss"] == 0.25
        assert "epoch" not in info.metrics and "step" not in info.metrics
        assert info.size_bytes == path.stat().st_size
        assert info.mtime == pytest.approx(path.stat().st_mtime)
        assert "model_state_dict" in info.keys

    @pytest.mark.parametrize(("rel", "source"), LAYOUTS)
    def test_source_and_priority_follow_location(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch, rel: str, source: str
    ) -> None:
        """Without source/priority, both follow from where the file lies."""
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tree.root))
        info = kr.get_checkpoint_info(tree.put(rel))
        assert (info.source, info.priority) == (source, SOURCES.index(source))

    def test_outside_root_is_external(self, tmp_path: Path) -> None:
        """A file outside root/working and root/input is external, priority 4."""
        info = kr.get_checkpoint_info(write_checkpoint(tmp_path / "x" / "a.pth"))
        assert info.is_valid
        assert (info.source, info.priority) == ("external", 4)

    def test_given_source_and_priority_win(self, tmp_path: Path) -> None:
        """source and priority given by the caller are kept."""
        path = write_checkpoint(tmp_path / "a.pth")
        info = kr.get_checkpoint_info(path, source="models", priority=3)
        assert (info.source, info.priority) == ("models", 3)

    @pytest.mark.parametrize(
        ("build", "reason"),
        [case[1:] for case in REJECTIONS],
        ids=[case[0] for case in REJECTIONS],
    )
    def test_rejection_reason(
        self, tmp_path: Path, build: Callable[[Path], Any], reason: str
    ) -> None:
        """A bad file is invalid with its reason, and never raises."""
        path = tmp_path / "bad.pth"
        build(path)
        info = kr.get_checkpoint_info(path)
        assert not info.is_valid
        assert info.error is not None and re.search(reason, info.error), info.error

    @pytest.mark.parametrize(
        ("keys", "reason"),
        [
            ({"epoch": -3}, r"^Invalid epoch: -3"),
            ({"epoch": 2, "accuracy": 1.7}, r"^Invalid accuracy: 1\.7"),
            ({"accuracy": 0.5}, r"^Missing keys: \['epoch'\]"),
        ],
    )
    def test_rejection_reason_legacy_format(
        self, tmp_path: Path, keys: dict[str, Any], reason: str
    ) -> None:
        """A legacy (non-zip) file is judged by the same rules."""
        path = tmp_path / "legacy.pth"
        ckpt = {"model_state_dict": make_model().state_dict(), **keys}
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
        info = kr.get_checkpoint_info(path)
        assert not info.is_valid
        assert info.error is not None and re.search(reason, info.error), info.error

    def test_missing_path(self, tmp_path: Path) -> None:
        """A path that does not exist is invalid: Not found."""
        info = kr.get_checkpoint_info(tmp_path / "nothing.pth")
        assert not info.is_valid and info.error.startswith("Not found")

    def test_broken_symlink(self, tmp_path: Path) -> None:
        """A dangling symlink is invalid: Not found."""
        link = tmp_path / "link.pth"
        link.symlink_to(tmp_path / "gone.pth")
        info = kr.get_checkpoint_info(link)
        assert not info.is_valid and info.error.startswith("Not found")

    def test_directory(self, tmp_path: Path) -> None:
        """A folder named like a checkpoint is invalid: Not a file."""
        (tmp_path / "dir.pth").mkdir()
        info = kr.get_checkpoint_info(tmp_path / "dir.pth")
        assert not info.is_valid and info.error.startswith("Not a file")

    @pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
    @pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
    def test_pickle_never_runs_code(
        self, tree: KaggleTree, tmp_path: Path, writer: str
    ) -> None:
        """A pickle whose __reduce__ calls os.system is refused, never run."""
        marker = tmp_path / "pwned"
        payload = {
            "epoch": 1,
            "model_state_dict": make_model().state_dict(),
            "hook": Exploit(f"touch {shlex.quote(str(marker))}"),
        }
        path = tree.checkpoints / "evil.pth"
        path.parent.mkdir(parents=True)
        if writer == "torch.save":
            torch.save(payload, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(payload, f)

        info = kr.get_checkpoint_info(path)
        best, _, _ = kr.find_best_checkpoint_across_sources(root=tree.root)
        state = kr.resume(make_model(1), root=tree.root, verbose=False)

        assert not marker.exists()
        assert not info.is_valid and info.error.startswith("Load error")
        assert best is None and not state.resumed

    def test_refused_class_named_and_allowed(self, tmp_path: Path) -> None:
        """A refused class is named in the reason; safe_globals allows it."""
        path = write_checkpoint(tmp_path / "cfg.pth", config=RunConfig(0.5))
        refused = kr.get_checkpoint_info(path)
        assert not refused.is_valid
        assert refused.error.startswith("Load error")
        assert "RunConfig" in refused.error and "safe_globals" in refused.error
        allowed = kr.get_checkpoint_info(path, safe_globals=[RunConfig])
        assert allowed.is_valid, allowed.error

    def test_trusted_allows_full_pickle(self, tmp_path: Path) -> None:
        """trusted=True reads a file that weights_only refuses."""
        path = write_checkpoint(tmp_path / "cfg.pth", epoch=4, config=RunConfig())
        info = kr.get_checkpoint_info(path, trusted=True)
        assert info.is_valid and info.epoch == 4

    def test_numpy_scalars_valid(self, tmp_path: Path) -> None:
        """np.int64 epoch and np.float64 accuracy read without an allowlist change."""
        before = set(map(repr, torch.serialization.get_safe_globals()))
        path = write_checkpoint(
            tmp_path / "np.pth",
            epoch=np.int64(7),
            step=np.int64(70),
            accuracy=np.float64(0.8125),
            val_loss=np.float32(0.5),
        )
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert info.epoch == 7 and type(info.epoch) is int
        assert info.step == 70
        assert info.accuracy == 0.8125 and type(info.accuracy) is float
        assert info.metrics["val_loss"] == 0.5
        assert set(map(repr, torch.serialization.get_safe_globals())) == before

    def test_numpy1_scalars_valid(self, tmp_path: Path) -> None:
        """Scalars pickled by numpy 1 (numpy.core.multiarray.scalar) are read."""
        path = tmp_path / "np1.pth"
        ckpt = {
            "epoch": np.int64(9),
            "accuracy": np.float64(0.75),
            "model_state_dict": make_model().state_dict(),
        }
        torch.save(ckpt, path, pickle_module=NUMPY1_PICKLE)
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert (info.epoch, info.accuracy) == (9, 0.75)

    def test_legacy_format_valid(self, tmp_path: Path) -> None:
        """A legacy (non-zip) torch file is read."""
        path = tmp_path / "legacy.pth"
        ckpt = {"epoch": 6, "model_state_dict": make_model().state_dict()}
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert info.epoch == 6

    @pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
    def test_model_state_key_variants(self, tmp_path: Path, key: str) -> None:
        """A model state under any of the three usual keys is enough."""
        path = tmp_path / "a.pth"
        torch.save({"epoch": 2, key: make_model().state_dict()}, path)
        assert kr.get_checkpoint_info(path).is_valid

    def test_required_keys_replace_default(self, tmp_path: Path) -> None:
        """required_keys replaces the default set of keys."""
        path = tmp_path / "weights.pth"
        torch.save({"epoch": 3, "weights": make_model().state_dict()}, path)
        assert not kr.get_checkpoint_info(path).is_valid
        assert kr.get_checkpoint_info(path, required_keys=["weights"]).is_valid
        info = kr.get_checkpoint_info(path, required_keys=["weights", "optimizer"])
        assert info.error.startswith("Missing keys: ['optimizer']")

    def test_metrics_collects_numeric_scalars(self, tmp_path: Path) -> None:
        """metrics holds every numeric scalar, top level winning over metrics{}."""
        path = write_checkpoint(
            tmp_path / "m.pth",
            loss=0.5,
            val_loss=torch.tensor(0.25),
            lr=3,
            flag=True,
            name="run",
            metrics={"f1": 0.75, "loss": 9.0},
        )
        metrics = kr.get_checkpoint_info(path).metrics
        assert metrics["loss"] == 0.5
        assert metrics["val_loss"] == 0.25
        assert metrics["lr"] == 3.0 and isinstance(metrics["lr"], float)
        assert metrics["f1"] == 0.75
        assert "flag" not in metrics and "name" not in metrics
        assert "epoch" not in metrics

    @pytest.mark.parametrize(
        "alias", ["acc", "val_accuracy", "val_acc", "best_accuracy"]
    )
    def test_accuracy_alias(self, tmp_path: Path, alias: str) -> None:
        """Accuracy is read from a common alias when "accuracy" is missing."""
        path = write_checkpoint(tmp_path / "a.pth", **{alias: 0.625})
        info = kr.get_checkpoint_info(path)
        assert info.is_valid and info.accuracy == 0.625

    @pytest.mark.parametrize(
        "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    )
    def test_accuracy_in_tensor(self, tmp_path: Path, dtype: torch.dtype) -> None:
        """A one-number tensor accuracy is read as a float."""
        value = torch.tensor(0.5, dtype=dtype)
        info = kr.get_checkpoint_info(
            write_checkpoint(tmp_path / "a.pth", accuracy=value)
        )
        assert info.is_valid, info.error
        assert info.accuracy == 0.5 and type(info.accuracy) is float

    @pytest.mark.parametrize("length", [3, 101])
    def test_scalar_tensor_view(self, tmp_path: Path, length: int) -> None:
        """A 0-dim tensor that views a longer tensor is read like any tensor."""
        per_epoch = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
        index = length // 2
        path = write_checkpoint(
            tmp_path / "a.pth", accuracy=per_epoch[index], val_loss=per_epoch[index]
        )
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert info.accuracy == pytest.approx(per_epoch[index].item())
        assert info.metrics["val_loss"] == pytest.approx(per_epoch[index].item())

    def test_accuracy_from_metrics_dict(self, tmp_path: Path) -> None:
        """Accuracy inside a metrics dict is read."""
        path = write_checkpoint(tmp_path / "a.pth", metrics={"accuracy": 0.5})
        assert kr.get_checkpoint_info(path).accuracy == 0.5

    def test_top_level_accuracy_wins(self, tmp_path: Path) -> None:
        """A top-level accuracy wins over one in the metrics dict."""
        path = write_checkpoint(
            tmp_path / "a.pth", accuracy=0.7, metrics={"accuracy": 0.9}
        )
        assert kr.get_checkpoint_info(path).accuracy == 0.7

    def test_metrics_accuracy_wins_over_alias(self, tmp_path: Path) -> None:
        """metrics["accuracy"] wins over a top-level alias."""
        path = write_checkpoint(tmp_path / "a.pth", acc=0.9, metrics={"accuracy": 0.6})
        assert kr.get_checkpoint_info(path).accuracy == 0.6

    def test_nan_val_loss_is_valid(self, tmp_path: Path) -> None:
        """A diverged (NaN) val_loss does not make the checkpoint invalid."""
        path = write_checkpoint(tmp_path / "a.pth", val_loss=float("nan"))
        info = kr.get_checkpoint_info(path)
        assert info.is_valid and math.isnan(info.metrics["val_loss"])

    def test_step_from_global_step(self, tmp_path: Path) -> None:
        """step is read from global_step too."""
        path = write_checkpoint(tmp_path / "a.pth", global_step=512)
        assert kr.get_checkpoint_info(path).step == 512


# --- selection -------------------------------------------------------------


def _best(tree: KaggleTree, **kwargs: Any) -> tuple[Path | None, Any, list[Any]]:
    best, info, candidates = kr.find_best_checkpoint_across_sources(
        root=tree.root, **kwargs
    )
    return (Path(best).resolve() if best is not None else None), info, candidates


class TestFindBestCheckpointAcrossSources:
    def test_design_example_1_accuracy(self, tree: KaggleTree) -> None:
        """Design example 1: by accuracy, input/run2 (0.900) wins."""
        tree.put("working/checkpoints/vqvae_pretrained.pth", epoch=50, accuracy=0.875)
        tree.put("input/run1/vqvae_pretrained.pth", epoch=45, accuracy=0.860)
        run2 = tree.put("input/run2/vqvae_pretrained.pth", epoch=40, accuracy=0.900)
        tree.put(
            "input/notebooks/user/nb/vqvae_pretrained.pth", epoch=30, accuracy=0.840
        )
        best, info, candidates = _best(tree, prefer_metric="accuracy")
        assert best == run2.resolve()
        assert (info.epoch, info.accuracy, info.source) == (40, 0.9, "input_datasets")
        assert len(candidates) == 4 and all(c.is_valid for c in candidates)

    def test_design_example_2_priority(self, tree: KaggleTree) -> None:
        """Design example 2: no metric, working wins though it is older."""
        work = tree.put(
            "working/checkpoints/vqvae_pretrained.pth", epoch=50, accuracy=0.875
        )
        tree.put("input/run1/vqvae_pretrained.pth", epoch=55, accuracy=0.880)
        nb = tree.put(
            "input/notebooks/user/nb/vqvae_pretrained.pth", epoch=60, accuracy=0.885
        )
        best, info, _ = _best(tree)
        assert best == work.resolve()
        assert (info.priority, info.epoch) == (0, 50)
        assert _best(tree, prefer_metric="epoch")[0] == nb.resolve()

    def test_design_example_3_invalid_filtered(self, tree: KaggleTree) -> None:
        """Design example 3: missing keys and load error are listed, not chosen."""
        work = tree.put(
            "working/checkpoints/vqvae_pretrained.pth", epoch=50, accuracy=0.875
        )
        run1 = tree.put(
            "input/run1/vqvae_pretrained.pth", epoch=45, drop=("model_state_dict",)
        )
        run2 = tree.root / "input/run2/vqvae_pretrained.pth"
        _truncated(run2)
        nb = tree.put(
            "input/notebooks/user/nb/vqvae_pretrained.pth", epoch=30, accuracy=0.840
        )
        best, info, candidates = _best(tree)
        assert best == work.resolve() and info.epoch == 50
        by_path = {Path(c.path).resolve(): c for c in candidates}
        assert set(by_path) == {p.resolve() for p in (work, run1, run2, nb)}
        assert by_path[run1.resolve()].error.startswith("Missing keys")
        assert by_path[run2.resolve()].error.startswith("Load error")
        valid = {p for p, c in by_path.items() if c.is_valid}
        assert valid == {work.resolve(), nb.resolve()}
        assert _best(tree, prefer_metric="accuracy")[0] == work.resolve()

    def test_design_search_flow(self, tree: KaggleTree) -> None:
        """The design's search flow: working (0.89) wins by accuracy and priority."""
        work = tree.put(
            "working/checkpoints/vqvae_pretrained.pth", epoch=50, accuracy=0.89
        )
        tree.put(
            "input/hmolqd-run1/checkpoints/vqvae_pretrained.pth",
            epoch=40,
            accuracy=0.85,
        )
        _random_bytes(tree.root / "input/hmolqd-run2/checkpoints/vqvae_pretrained.pth")
        tree.put(
            "input/notebooks/user/nb/vqvae_pretrained.pth", epoch=30, accuracy=0.82
        )
        assert _best(tree, prefer_metric="accuracy")[0] == work.resolve()
        assert _best(tree)[0] == work.resolve()

    def test_nothing_valid(self, tree: KaggleTree) -> None:
        """No valid candidate gives (None, None, all candidates)."""
        tree.put("working/checkpoints/a.pth", epoch=-3)
        tree.put("input/run/b.pth", accuracy=1.7)
        best, info, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert best is None and info is None
        assert len(candidates) == 2 and not any(c.is_valid for c in candidates)

    def test_empty_tree(self, tree: KaggleTree) -> None:
        """An empty tree gives (None, None, [])."""
        assert kr.find_best_checkpoint_across_sources(root=tree.root) == (
            None,
            None,
            [],
        )

    @pytest.mark.parametrize(
        ("present", "winner"),
        [
            (SOURCES, "working"),
            (SOURCES[1:], "input_datasets"),
            (SOURCES[2:], "notebook_outputs"),
            (SOURCES[3:], "models"),
        ],
    )
    def test_priority_order(
        self, tree: KaggleTree, present: tuple[str, ...], winner: str
    ) -> None:
        """Without a metric the lowest priority number wins, whatever the epoch."""
        places = {
            "working": "working/checkpoints/a.pth",
            "input_datasets": "input/run/a.pth",
            "notebook_outputs": "input/notebooks/u/nb/a.pth",
            "models": "input/models/u/m/pytorch/default/1/a.pth",
        }
        for epoch, source in enumerate(present):
            tree.put(places[source], epoch=epoch)
        _, info, _ = _best(tree)
        assert info.source == winner

    def test_candidates_in_discovery_order(self, tree: KaggleTree) -> None:
        """all_candidates runs by priority, then path."""
        tree.put("input/models/u/m/pytorch/default/1/a.pth")
        tree.put("input/notebooks/u/nb/a.pth")
        tree.put("input/zeta/a.pth")
        tree.put("input/alpha/a.pth")
        tree.put("working/checkpoints/a.pth")
        _, _, candidates = _best(tree)
        order = [(c.priority, str(c.path)) for c in candidates]
        assert [p for p, _ in order] == [0, 1, 1, 2, 3]
        assert order == sorted(order)

    def test_tie_goes_to_higher_epoch(self, tree: KaggleTree) -> None:
        """Same priority: the higher epoch wins."""
        tree.put("working/checkpoints/b.pth", epoch=10)
        high = tree.put("working/checkpoints/a.pth", epoch=12)
        tree.put("working/checkpoints/c.pth", epoch=11)
        assert _best(tree)[0] == high.resolve()

    def test_tie_goes_to_higher_step(self, tree: KaggleTree) -> None:
        """Same priority and epoch: the higher step wins."""
        tree.put("working/checkpoints/b.pth", epoch=10, step=100)
        high = tree.put("working/checkpoints/a.pth", epoch=10, step=200)
        assert _best(tree)[0] == high.resolve()

    @pytest.mark.parametrize("newer", ["a.pth", "b.pth"])
    def test_tie_goes_to_newer_file(self, tree: KaggleTree, newer: str) -> None:
        """Same priority, epoch and step: the newer file wins."""
        for name, stamp in (("a.pth", 1_600_000_000), ("b.pth", 1_600_000_000)):
            path = tree.put(f"working/checkpoints/{name}", epoch=10, step=5)
            os.utime(path, (stamp, stamp + (100 if name == newer else 0)))
        assert _best(tree)[0] == (tree.checkpoints / newer).resolve()

    @pytest.mark.parametrize(
        ("metric", "lower_wins"),
        [
            ("val_loss", True),
            ("train_error", True),
            ("perplexity", True),
            ("accuracy", False),
            ("f1", False),
        ],
    )
    def test_metric_mode_inferred(
        self, tree: KaggleTree, metric: str, lower_wins: bool
    ) -> None:
        """Mode is min for loss/error/perplexity names, else max."""
        good, bad = (0.2, 0.6) if lower_wins else (0.6, 0.2)
        want = tree.put("working/checkpoints/want.pth", epoch=1, **{metric: good})
        tree.put("working/checkpoints/other.pth", epoch=2, **{metric: bad})
        assert _best(tree, prefer_metric=metric)[0] == want.resolve()

    def test_explicit_mode_overrides(self, tree: KaggleTree) -> None:
        """mode="max" overrides the min inferred for a loss."""
        high = tree.put("working/checkpoints/high.pth", epoch=1, val_loss=0.6)
        low = tree.put("working/checkpoints/low.pth", epoch=2, val_loss=0.2)
        assert _best(tree, prefer_metric="val_loss", mode="max")[0] == high.resolve()
        assert _best(tree, prefer_metric="val_loss", mode="min")[0] == low.resolve()

    @pytest.mark.parametrize("mode", [None, "min", "max"])
    def test_nan_metric_ranks_last(self, tree: KaggleTree, mode: str | None) -> None:
        """A NaN val_loss ranks after every real value, in either mode."""
        tree.put("working/checkpoints/diverged.pth", epoch=9, val_loss=float("nan"))
        finite = tree.put("input/run/ok.pth", epoch=3, val_loss=0.9)
        assert _best(tree, prefer_metric="val_loss", mode=mode)[0] == finite.resolve()

    def test_nan_metric_still_selectable(self, tree: KaggleTree) -> None:
        """A NaN val_loss checkpoint is chosen when it is the only one."""
        only = tree.put("working/checkpoints/diverged.pth", val_loss=float("nan"))
        assert _best(tree, prefer_metric="val_loss")[0] == only.resolve()

    def test_missing_metric_ranks_last(self, tree: KaggleTree) -> None:
        """Candidates without the metric rank after those with it."""
        tree.put("working/checkpoints/none.pth", epoch=9)
        has = tree.put("input/notebooks/u/nb/has.pth", epoch=1, val_loss=5.0)
        assert _best(tree, prefer_metric="val_loss")[0] == has.resolve()

    def test_accuracy_alias_used_for_metric(self, tree: KaggleTree) -> None:
        """prefer_metric="accuracy" sees accuracy given under an alias."""
        tree.put("working/checkpoints/a.pth", accuracy=0.5)
        alias = tree.put("input/run/b.pth", val_acc=0.95)
        assert _best(tree, prefer_metric="accuracy")[0] == alias.resolve()

    def test_metric_tie_goes_to_higher_epoch(self, tree: KaggleTree) -> None:
        """Equal metric: the higher epoch wins."""
        tree.put("working/checkpoints/a.pth", epoch=3, accuracy=0.8)
        later = tree.put("input/run/b.pth", epoch=4, accuracy=0.8)
        assert _best(tree, prefer_metric="accuracy")[0] == later.resolve()

    def test_metric_tie_then_priority(self, tree: KaggleTree) -> None:
        """Equal metric and epoch: the lower priority number wins."""
        tree.put("input/notebooks/u/nb/a.pth", epoch=3, accuracy=0.8)
        work = tree.put("working/checkpoints/z.pth", epoch=3, accuracy=0.8)
        tree.put("input/run/b.pth", epoch=3, accuracy=0.8)
        assert _best(tree, prefer_metric="accuracy")[0] == work.resolve()

    def test_invalid_never_chosen_by_metric(self, tree: KaggleTree) -> None:
        """An invalid candidate loses even with the best-looking metric."""
        tree.put("working/checkpoints/a.pth", epoch=9, accuracy=1.7)
        ok = tree.put("input/run/b.pth", epoch=1, accuracy=0.5)
        assert _best(tree, prefer_metric="accuracy")[0] == ok.resolve()

    @pytest.mark.parametrize("metric", ["epoch", "latest"])
    def test_latest(self, tree: KaggleTree, metric: str) -> None:
        """prefer_metric epoch/latest: highest epoch, whatever the priority."""
        tree.put("working/checkpoints/a.pth", epoch=5)
        latest = tree.put("input/run/b.pth", epoch=9)
        tree.put("input/notebooks/u/nb/c.pth", epoch=7)
        assert _best(tree, prefer_metric=metric)[0] == latest.resolve()

    def test_latest_ties_by_step_then_priority(self, tree: KaggleTree) -> None:
        """prefer_metric epoch: ties go to the higher step, then priority."""
        tree.put("working/checkpoints/a.pth", epoch=5, step=10)
        stepped = tree.put("input/notebooks/u/nb/c.pth", epoch=5, step=20)
        assert _best(tree, prefer_metric="epoch")[0] == stepped.resolve()
        work = tree.put("working/checkpoints/b.pth", epoch=5, step=20)
        assert _best(tree, prefer_metric="epoch")[0] == work.resolve()

    def test_patterns_narrow_choice(self, tree: KaggleTree) -> None:
        """patterns limits the candidates the choice is made from."""
        tree.put("working/checkpoints/checkpoint_0050.pth", epoch=50)
        want = tree.put("input/run/vqvae_pretrained.pth", epoch=10)
        best, _, candidates = _best(tree, patterns="vqvae_pretrained.pth")
        assert best == want.resolve() and len(candidates) == 1

    def test_required_keys_passed_on(self, tree: KaggleTree) -> None:
        """required_keys reaches the check of every candidate."""
        tree.put("working/checkpoints/a.pth", epoch=9)
        want = tree.put("input/run/b.pth", epoch=1, optimizer_state_dict={})
        keys = ["epoch", "model_state_dict", "optimizer_state_dict"]
        assert _best(tree, required_keys=keys)[0] == want.resolve()

    def test_root_from_env(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without root, KAGGLE_RESUME_ROOT is used."""
        want = tree.put("input/run/a.pth")
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tree.root))
        best, _, _ = kr.find_best_checkpoint_across_sources()
        assert Path(best).resolve() == want.resolve()


# --- copy ------------------------------------------------------------------


class TestCopyCheckpointToWorking:
    @pytest.mark.parametrize("rel", ["working/checkpoints/a.pth", "working/a.pth"])
    def test_working_used_in_place(self, tree: KaggleTree, rel: str) -> None:
        """A checkpoint under working is returned as is, nothing copied."""
        path = tree.put(rel)
        before = snapshot(tree.working)
        dst = kr.copy_checkpoint_to_working(path, root=tree.root)
        assert Path(dst).resolve() == path.resolve()
        assert snapshot(tree.working) == before

    def test_input_copied(self, tree: KaggleTree) -> None:
        """An input checkpoint is copied into working/checkpoints, mtime kept."""
        src = tree.put("input/run/checkpoints/vqvae_pretrained.pth", epoch=4)
        os.utime(src, (1_500_000_000, 1_500_000_000))
        inputs = snapshot(tree.input)
        dst = Path(kr.copy_checkpoint_to_working(str(src), root=tree.root))
        assert dst.resolve() == (tree.checkpoints / src.name).resolve()
        assert dst.read_bytes() == src.read_bytes()
        assert dst.stat().st_mtime == pytest.approx(1_500_000_000, abs=1)
        assert snapshot(tree.input) == inputs
        assert [p.name for p in tree.checkpoints.iterdir()] == [src.name]

    def test_identical_not_copied_again(self, tree: KaggleTree) -> None:
        """A byte-identical file in working is left as it is."""
        src = tree.put("input/run/a.pth")
        dst = Path(kr.copy_checkpoint_to_working(src, root=tree.root))
        stat = dst.stat()
        again = Path(kr.copy_checkpoint_to_working(src, root=tree.root))
        assert again.resolve() == dst.resolve()
        assert (dst.stat().st_ino, dst.stat().st_mtime_ns) == (
            stat.st_ino,
            stat.st_mtime_ns,
        )
        assert [p.name for p in tree.checkpoints.iterdir()] == ["a.pth"]

    def test_different_file_backed_up(self, tree: KaggleTree) -> None:
        """A different file of that name is kept under a non-matching backup name."""
        old = tree.put("working/checkpoints/a.pth", epoch=2).read_bytes()
        src = tree.put("input/run/a.pth", epoch=9)
        dst = Path(kr.copy_checkpoint_to_working(src, root=tree.root))
        assert dst.read_bytes() == src.read_bytes()
        others = [p for p in tree.checkpoints.iterdir() if p.name != "a.pth"]
        assert len(others) == 1
        backup = others[0]
        assert backup.read_bytes() == old
        assert not matches_pattern(backup.name)
        assert re.fullmatch(r"a\.pth\.bak-\d{8}-\d{6}(-\d+)?", backup.name)
        result = kr.find_checkpoint_locations(root=tree.root)
        assert resolved(result["working"]) == [dst.resolve()]

    def test_backups_do_not_overwrite_each_other(self, tree: KaggleTree) -> None:
        """Two backups within one second both survive."""
        first = tree.put("working/checkpoints/a.pth", epoch=1).read_bytes()
        run1 = tree.put("input/run1/a.pth", epoch=2)
        run2 = tree.put("input/run2/a.pth", epoch=3)
        kr.copy_checkpoint_to_working(run1, root=tree.root)
        kr.copy_checkpoint_to_working(run2, root=tree.root)
        kept = {p.read_bytes() for p in tree.checkpoints.iterdir() if p.name != "a.pth"}
        assert kept == {first, run1.read_bytes()}
        assert (tree.checkpoints / "a.pth").read_bytes() == run2.read_bytes()

    def test_no_space(self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch) -> None:
        """Too little free space raises ENOSPC naming the bytes; nothing written."""
        src = tree.put("input/run/a.pth")
        size = src.stat().st_size
        free = 123

        def fake_usage(path: Any) -> Usage:
            return Usage(total=10**9, used=10**9 - free, free=free)

        monkeypatch.setattr(shutil, "disk_usage", fake_usage)
        with pytest.raises(OSError, match=r"(?i)space") as excinfo:
            kr.copy_checkpoint_to_working(src, root=tree.root)
        assert excinfo.value.errno == errno.ENOSPC
        message = str(excinfo.value).replace(",", "").replace("_", "")
        numbers = [int(n) for n in re.findall(r"\d+", message)]
        assert free in numbers
        assert any(n >= size for n in numbers)
        left = list(tree.checkpoints.iterdir()) if tree.checkpoints.exists() else []
        assert left == []
        assert src.stat().st_size == size

    def test_failed_copy_leaves_no_half_file(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A copy killed before its rename leaves nothing under a checkpoint name."""
        src = tree.put("input/run/a.pth")

        def broken_replace(*args: Any, **kwargs: Any) -> None:
            raise OSError("simulated kill during copy")

        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="simulated kill"):
            kr.copy_checkpoint_to_working(src, root=tree.root)
        monkeypatch.undo()
        names = (
            [p.name for p in tree.checkpoints.rglob("*")]
            if (tree.checkpoints.exists())
            else []
        )
        assert not any(matches_pattern(n) for n in names)
        assert kr.find_checkpoint_locations(root=tree.root)["working"] == []

    def test_root_from_env(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without root, KAGGLE_RESUME_ROOT decides where working is."""
        src = tree.put("input/run/a.pth")
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tree.root))
        dst = Path(kr.copy_checkpoint_to_working(src))
        assert dst.resolve() == (tree.checkpoints / "a.pth").resolve()


# --- save ------------------------------------------------------------------


def _leaf_types(obj: Any) -> set[type]:
    if isinstance(obj, dict):
        return set().union(*(_leaf_types(k) | _leaf_types(v) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return set().union(*(_leaf_types(x) for x in obj))
    return {type(obj)}


def _plain_load(path: Path) -> Any:
    """torch.load(weights_only=True) with torch's allowlist emptied."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return torch.load(path, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(saved)


class TestSaveCheckpoint:
    def test_default_path(self, tree: KaggleTree) -> None:
        """Without a path, the file is root/working/checkpoints/checkpoint.pth."""
        path = Path(kr.save_checkpoint(model=make_model(), epoch=0, root=tree.root))
        assert path.resolve() == (tree.checkpoints / "checkpoint.pth").resolve()
        assert path.is_file()

    def test_bare_name_goes_to_checkpoints(self, tree: KaggleTree) -> None:
        """A bare file name lands in root/working/checkpoints/."""
        path = kr.save_checkpoint(
            "best.pth", model=make_model(), epoch=0, root=tree.root
        )
        assert Path(path).resolve() == (tree.checkpoints / "best.pth").resolve()
        assert (tree.checkpoints / "best.pth").is_file()

    def test_explicit_path_kept(self, tree: KaggleTree, tmp_path: Path) -> None:
        """A full path is written where it says."""
        target = tmp_path / "elsewhere" / "x.pth"
        target.parent.mkdir()
        path = kr.save_checkpoint(target, model=make_model(), epoch=1, root=tree.root)
        assert Path(path).resolve() == target.resolve() and target.is_file()

    def test_refuses_input(self, tree: KaggleTree) -> None:
        """Saving under root/input is refused: inputs are read-only on Kaggle."""
        with pytest.raises(ValueError, match="input"):
            kr.save_checkpoint(
                tree.input / "run" / "x.pth",
                model=make_model(),
                epoch=1,
                root=tree.root,
            )

    def test_stored_keys_plain_loadable(self, tree: KaggleTree) -> None:
        """Everything is stored and loads with plain weights_only, no allowlist."""
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
        scaler = cpu_scaler()
        train_step(model, opt)
        history = [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]
        path = kr.save_checkpoint(
            "full.pth",
            model=model,
            optimizer=opt,
            scheduler=sched,
            scaler=scaler,
            epoch=1,
            step=20,
            accuracy=0.5,
            metrics={"val_loss": 0.75},
            history=history,
            extra={"note": "hello", "seed": 3},
            root=tree.root,
        )
        ckpt = _plain_load(Path(path))
        assert {
            "format_version",
            "epoch",
            "step",
            "model_state_dict",
            "optimizer_state_dict",
            "scheduler_state_dict",
            "scaler_state_dict",
            "accuracy",
            "metrics",
            "history",
            "rng_state",
            "extra",
        } <= set(ckpt)
        assert isinstance(ckpt["format_version"], int)
        assert (ckpt["epoch"], ckpt["step"], ckpt["accuracy"]) == (1, 20, 0.5)
        assert ckpt["metrics"]["val_loss"] == 0.75
        assert ckpt["history"] == history
        assert ckpt["extra"] == {"note": "hello", "seed": 3}
        assert same_state(ckpt["model_state_dict"], model.state_dict())
        assert same_state(ckpt["optimizer_state_dict"], opt.state_dict())
        assert isinstance(ckpt["rng_state"]["torch"], torch.Tensor)
        assert {"numpy", "python"} <= set(ckpt["rng_state"])
        allowed = (torch.Tensor, int, float, str, bool, bytes, type(None))
        assert all(issubclass(t, allowed) for t in _leaf_types(ckpt)), _leaf_types(ckpt)

    def test_saved_file_inspects_valid(self, tree: KaggleTree) -> None:
        """A saved checkpoint reads back valid with its epoch, step and metrics."""
        path = kr.save_checkpoint(
            "a.pth",
            model=make_model(),
            epoch=3,
            step=30,
            accuracy=0.25,
            metrics={"val_loss": 1.5},
            root=tree.root,
        )
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert (info.epoch, info.step, info.accuracy) == (3, 30, 0.25)
        assert info.metrics["val_loss"] == 1.5

    def test_wrapped_model_saved_prefix_free(self, tree: KaggleTree) -> None:
        """A DataParallel model is saved without the "module." prefix."""
        path = kr.save_checkpoint(
            "dp.pth", model=nn.DataParallel(make_model()), epoch=1, root=tree.root
        )
        keys = set(_plain_load(Path(path))["model_state_dict"])
        assert keys == {"weight", "bias"}

    def test_file_fsynced_before_rename(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The file's data is fsynced before it is renamed into place."""
        events: list[str] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            is_file = stat.S_ISREG(os.fstat(fd).st_mode)
            events.append("fsync-file" if is_file else "fsync-other")
            real_fsync(fd)

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            events.append("replace")
            real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        kr.save_checkpoint("a.pth", model=make_model(), epoch=1, root=tree.root)
        assert "replace" in events
        assert "fsync-file" in events[: events.index("replace")]

    def test_temp_file_in_same_folder_not_matching(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The file is renamed into place from a non-matching temp in its folder."""
        moves: list[tuple[Path, Path]] = []
        real_replace = os.replace

        def spy(src: Any, dst: Any, **kwargs: Any) -> None:
            moves.append((Path(os.fsdecode(src)), Path(os.fsdecode(dst))))
            real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "replace", spy)
        path = Path(
            kr.save_checkpoint("a.pth", model=make_model(), epoch=1, root=tree.root)
        )
        into = [src for src, dst in moves if dst.resolve() == path.resolve()]
        assert len(into) == 1
        assert into[0].parent.resolve() == path.parent.resolve()
        assert not matches_pattern(into[0].name)

    @pytest.mark.parametrize("fault", ["torch.save", "os.replace"])
    def test_failed_save_keeps_previous(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch, fault: str
    ) -> None:
        """A save killed midway leaves the previous checkpoint intact."""
        first = make_model(1)
        path = Path(kr.save_checkpoint("a.pth", model=first, epoch=1, root=tree.root))
        before = path.read_bytes()

        def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as out:
                    out.write(b"PK\x03\x04 half a checkpoint")
            else:
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("simulated kill during save")

        def broken_replace(*args: Any, **kwargs: Any) -> None:
            raise OSError("simulated kill during save")

        if fault == "torch.save":
            monkeypatch.setattr(torch, "save", broken_save)
        else:
            monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="simulated kill"):
            kr.save_checkpoint("a.pth", model=make_model(2), epoch=2, root=tree.root)
        monkeypatch.undo()

        assert path.read_bytes() == before
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["epoch"] == 1
        assert same_state(ckpt["model_state_dict"], first.state_dict())
        names = [p.name for p in tree.checkpoints.iterdir()]
        assert [n for n in names if matches_pattern(n)] == ["a.pth"]

    def test_root_from_env(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without root, a bare name goes under KAGGLE_RESUME_ROOT."""
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tree.root))
        kr.save_checkpoint("env.pth", model=make_model(), epoch=1)
        assert (tree.checkpoints / "env.pth").is_file()


# --- resume ----------------------------------------------------------------


class TestResume:
    def test_fresh_start(self, tree: KaggleTree) -> None:
        """No checkpoint: start_epoch 0, not resumed, model untouched."""
        model = make_model()
        before = clone_state(model)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert (state.start_epoch, state.start_step, state.resumed) == (0, 0, False)
        assert state.path is None and state.info is None
        assert state.checkpoint == {} and state.candidates == []
        assert same_state(model.state_dict(), before)

    def test_restores_model_optimizer_scheduler_scaler(self, tree: KaggleTree) -> None:
        """Model, optimizer, scheduler and scaler come back as saved."""
        model = make_model(1)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        scaler = cpu_scaler(init_scale=1024.0)
        for _ in range(3):
            train_step(model, opt)
            sched.step()
        kr.save_checkpoint(
            "last.pth",
            model=model,
            optimizer=opt,
            scheduler=sched,
            scaler=scaler,
            epoch=7,
            step=300,
            extra={"tag": "x"},
            root=tree.root,
        )

        new = make_model(2)
        new_opt = torch.optim.Adam(new.parameters(), lr=0.01)
        new_sched = torch.optim.lr_scheduler.StepLR(new_opt, step_size=2, gamma=0.5)
        new_scaler = cpu_scaler()
        state = kr.resume(
            new, new_opt, new_sched, new_scaler, root=tree.root, verbose=False
        )

        assert state.resumed
        assert (state.start_epoch, state.start_step) == (8, 301)
        assert Path(state.path).resolve() == (tree.checkpoints / "last.pth").resolve()
        assert state.info.epoch == 7 and state.checkpoint["extra"] == {"tag": "x"}
        assert same_state(new.state_dict(), model.state_dict())
        assert same_state(new_opt.state_dict(), opt.state_dict())
        assert new_sched.state_dict() == sched.state_dict()
        assert new_scaler.state_dict()["scale"] == 1024.0

    def test_rng_restored(self, tree: KaggleTree) -> None:
        """Random draws after resume equal the draws right after the save."""
        kr.save_checkpoint("rng.pth", model=make_model(), epoch=1, root=tree.root)
        expected = (torch.rand(3), random.random(), float(np.random.rand()))
        torch.manual_seed(999)
        random.seed(999)
        np.random.seed(999)
        kr.resume(make_model(5), root=tree.root, verbose=False)
        assert torch.equal(torch.rand(3), expected[0])
        assert random.random() == expected[1]
        assert float(np.random.rand()) == expected[2]

    def test_start_step_zero_without_step(self, tree: KaggleTree) -> None:
        """Without a saved step, start_step is 0."""
        tree.put("working/checkpoints/a.pth", epoch=4)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert (state.start_epoch, state.start_step) == (5, 0)

    @pytest.mark.parametrize(
        "save_kwargs",
        [
            {},
            {"pickle_module": NUMPY1_PICKLE},
            {"_use_new_zipfile_serialization": False},
        ],
        ids=["numpy2-zip", "numpy1-zip", "legacy"],
    )
    def test_numpy_scalars_and_legacy_resume(
        self, tree: KaggleTree, save_kwargs: dict[str, Any]
    ) -> None:
        """Checkpoints with numpy scalars, or in the legacy format, resume."""
        src = make_model(3)
        path = tree.checkpoints / "np.pth"
        path.parent.mkdir(parents=True)
        ckpt = {
            "epoch": np.int64(4),
            "step": np.int64(40),
            "accuracy": np.float64(0.5),
            "model_state_dict": src.state_dict(),
        }
        torch.save(ckpt, path, **save_kwargs)
        model = make_model(4)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert state.resumed, [c.error for c in state.candidates]
        assert (state.start_epoch, state.start_step) == (5, 41)
        assert same_state(model.state_dict(), src.state_dict())

    def test_scaler_state_that_cannot_load(self, tree: KaggleTree) -> None:
        """A scaler state that will not load leaves no half-loaded model behind."""
        src = make_model(1)
        src_opt = torch.optim.SGD(src.parameters(), lr=0.1)
        disabled = cpu_scaler(enabled=False)  # saved by a session without AMP
        kr.save_checkpoint(
            "a.pth",
            model=src,
            optimizer=src_opt,
            scaler=disabled,
            epoch=3,
            root=tree.root,
        )
        model = make_model(2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        before = clone_state(model)
        state = kr.resume(
            model, opt, scaler=cpu_scaler(), root=tree.root, verbose=False
        )
        if state.resumed:
            assert same_state(model.state_dict(), src.state_dict())
        else:
            assert same_state(model.state_dict(), before)

    def test_input_copied_then_loaded(self, tree: KaggleTree) -> None:
        """An input checkpoint is copied to working and loaded from there."""
        src_model = make_model(3)
        src = tree.put("input/run1/checkpoints/vqvae.pth", epoch=50, model=src_model)
        inputs = snapshot(tree.input)
        model = make_model(4)
        state = kr.resume(model, root=tree.root, verbose=False)
        copy = tree.checkpoints / "vqvae.pth"
        assert state.resumed and state.start_epoch == 51
        assert Path(state.path).resolve() == copy.resolve()
        assert copy.read_bytes() == src.read_bytes()
        assert state.info.source == "input_datasets"
        assert same_state(model.state_dict(), src_model.state_dict())
        assert snapshot(tree.input) == inputs

    def test_copy_false_loads_in_place(self, tree: KaggleTree) -> None:
        """copy=False loads from the input and writes nothing to working."""
        src = tree.put("input/run1/a.pth", epoch=2)
        state = kr.resume(make_model(), root=tree.root, copy=False, verbose=False)
        assert state.resumed and Path(state.path).resolve() == src.resolve()
        assert not tree.checkpoints.exists() or not any(tree.checkpoints.iterdir())

    def test_copy_over_stale_working_file(self, tree: KaggleTree) -> None:
        """Copying over an older working file of that name keeps it as backup."""
        stale = tree.put("working/checkpoints/a.pth", epoch=2).read_bytes()
        src = tree.put("input/run/a.pth", epoch=9)
        state = kr.resume(
            make_model(), root=tree.root, prefer_metric="epoch", verbose=False
        )
        assert state.start_epoch == 10
        assert (tree.checkpoints / "a.pth").read_bytes() == src.read_bytes()
        backups = [p for p in tree.checkpoints.iterdir() if p.name != "a.pth"]
        assert [p.read_bytes() for p in backups] == [stale]

    def test_pattern_and_metric(self, tree: KaggleTree) -> None:
        """pattern and prefer_metric steer the choice."""
        tree.put("working/checkpoints/last.pth", epoch=9, accuracy=0.5)
        tree.put("working/checkpoints/best_a.pth", epoch=3, accuracy=0.9)
        tree.put("working/checkpoints/best_b.pth", epoch=4, accuracy=0.7)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert state.start_epoch == 10
        state = kr.resume(
            make_model(), pattern="best_*.pth", root=tree.root, verbose=False
        )
        assert state.start_epoch == 5
        state = kr.resume(
            make_model(), prefer_metric="accuracy", root=tree.root, verbose=False
        )
        assert state.start_epoch == 4

    def test_root_from_env(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without root, resume searches KAGGLE_RESUME_ROOT."""
        tree.put("working/checkpoints/a.pth", epoch=6)
        monkeypatch.setenv("KAGGLE_RESUME_ROOT", str(tree.root))
        assert kr.resume(make_model(), verbose=False).start_epoch == 7

    @pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
    def test_prefixed_state_into_plain_model(
        self, tree: KaggleTree, prefix: str
    ) -> None:
        """State saved from DataParallel or torch.compile loads into a plain model."""
        src = make_model(3)
        path = tree.checkpoints / "wrapped.pth"
        path.parent.mkdir(parents=True)
        state_dict = {prefix + k: v for k, v in src.state_dict().items()}
        torch.save({"epoch": 2, "model_state_dict": state_dict}, path)
        model = make_model(4)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert state.resumed
        assert same_state(model.state_dict(), src.state_dict())

    @pytest.mark.parametrize(
        "wrap", [nn.DataParallel, Compiled], ids=["DataParallel", "compiled"]
    )
    def test_plain_state_into_wrapped_model(
        self, tree: KaggleTree, wrap: Callable[[nn.Module], nn.Module]
    ) -> None:
        """A plain state loads into a model whose keys carry a wrapper prefix."""
        src = make_model(3)
        tree.put("working/checkpoints/plain.pth", epoch=2, model=src)
        inner = make_model(4)
        state = kr.resume(wrap(inner), root=tree.root, verbose=False)
        assert state.resumed
        assert same_state(inner.state_dict(), src.state_dict())

    def test_dataparallel_round_trip(self, tree: KaggleTree) -> None:
        """save_checkpoint from a DataParallel model resumes into a plain one."""
        src = make_model(3)
        kr.save_checkpoint(
            "dp.pth", model=nn.DataParallel(src), epoch=1, root=tree.root
        )
        model = make_model(4)
        assert kr.resume(model, root=tree.root, verbose=False).resumed
        assert same_state(model.state_dict(), src.state_dict())

    def test_wrong_shapes_skipped_model_untouched(self, tree: KaggleTree) -> None:
        """A checkpoint that does not fit is rejected and the model left as it was."""
        tree.put("working/checkpoints/big.pth", epoch=9, model=make_model(1, 3))
        model = make_model(2)
        before = clone_state(model)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert not state.resumed and state.start_epoch == 0
        assert same_state(model.state_dict(), before)
        assert any(
            (c.error or "").startswith("Does not fit the model")
            for c in state.candidates
        )

    def test_partly_fitting_checkpoint_loads_nothing(self, tree: KaggleTree) -> None:
        """When only some layers fit, no layer is loaded."""
        torch.manual_seed(0)
        other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
        tree.put("working/checkpoints/a.pth", epoch=3, model=other)
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        before = clone_state(model)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert not state.resumed
        assert same_state(model.state_dict(), before)

    def test_optimizer_groups_mismatch_loads_nothing(self, tree: KaggleTree) -> None:
        """An optimizer state with other param groups is rejected before any load."""
        src = make_model(1)
        src_opt = torch.optim.SGD(
            [{"params": [src.weight]}, {"params": [src.bias]}], lr=0.1
        )
        kr.save_checkpoint(
            "a.pth", model=src, optimizer=src_opt, epoch=3, root=tree.root
        )
        model = make_model(2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        before = clone_state(model)
        state = kr.resume(model, opt, root=tree.root, verbose=False)
        assert not state.resumed
        assert same_state(model.state_dict(), before)
        assert len(opt.state_dict()["param_groups"]) == 1

    def test_strict_false_accepts_extra_keys(self, tree: KaggleTree) -> None:
        """strict=False loads a state with extra keys; strict=True rejects it."""
        src = make_model(1)
        state_dict = dict(src.state_dict(), extra_head=torch.zeros(2))
        path = tree.checkpoints / "a.pth"
        path.parent.mkdir(parents=True)
        torch.save({"epoch": 2, "model_state_dict": state_dict}, path)
        model = make_model(2)
        assert not kr.resume(model, root=tree.root, verbose=False).resumed
        state = kr.resume(model, root=tree.root, strict=False, verbose=False)
        assert state.resumed
        assert same_state(model.state_dict(), src.state_dict())

    def test_fallback_to_next_candidate(
        self, tree: KaggleTree, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When the best candidate fails to load, the next is used, with a warning."""
        tree.put("working/checkpoints/big.pth", epoch=9, model=make_model(1, 3))
        good = make_model(5)
        tree.put("input/run1/checkpoints/good.pth", epoch=5, model=good)
        model = make_model(2)
        caplog.set_level(logging.INFO, logger="kaggle_resume")
        state = kr.resume(model, root=tree.root)
        assert state.resumed and state.start_epoch == 6
        assert state.info.source == "input_datasets"
        assert same_state(model.state_dict(), good.state_dict())
        assert any(
            r.name.startswith("kaggle_resume") and r.levelno == logging.WARNING
            for r in caplog.records
        )

    def test_failed_copy_removed(self, tree: KaggleTree) -> None:
        """An input copy that then fails to load is removed; the source stays."""
        src = tree.put("input/run1/big.pth", epoch=9, model=make_model(1, 3))
        data = src.read_bytes()
        state = kr.resume(make_model(2), root=tree.root, verbose=False)
        assert not state.resumed
        left = list(tree.checkpoints.rglob("*")) if tree.checkpoints.exists() else []
        assert left == []
        assert src.read_bytes() == data
        again = kr.find_best_checkpoint_across_sources(root=tree.root)[2]
        assert [c.source for c in again] == ["input_datasets"]

    def test_integrity_error(self, tree: KaggleTree) -> None:
        """A checkpoint whose tensor bytes fail the zip CRC check is not loaded."""
        path = tree.put("working/checkpoints/a.pth", epoch=3, model=make_model(1))
        with zipfile.ZipFile(path) as archive:
            entry = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
        raw = bytearray(path.read_bytes())
        name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26 :][:4])
        raw[entry.header_offset + 30 + name_len + extra_len] ^= 0xFF
        path.write_bytes(bytes(raw))
        model = make_model(2)
        before = clone_state(model)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert not state.resumed
        assert same_state(model.state_dict(), before)
        errors = [c.error or "" for c in state.candidates]
        assert any(e.startswith("Integrity error") for e in errors), errors

    def test_nothing_loads_reasons_kept(self, tree: KaggleTree) -> None:
        """Every rejected candidate keeps its reason in a fresh start."""
        tree.put("working/checkpoints/a.pth", epoch=-3)
        _html_page(tree.root / "input/run/b.pth")
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert not state.resumed and state.start_epoch == 0
        reasons = sorted(c.error.split(":")[0] for c in state.candidates)
        assert reasons == ["Invalid epoch", "Load error"]

    @pytest.mark.parametrize(
        ("history", "expected"),
        [
            (
                [{"epoch": e, "loss": 1 / (e + 1)} for e in range(8)],
                [{"epoch": e, "loss": 1 / (e + 1)} for e in range(6)],
            ),
            ([0.9 - e / 10 for e in range(8)], [0.9 - e / 10 for e in range(6)]),
            (
                {"loss": list(range(8)), "acc": list(range(10, 18))},
                {"loss": list(range(6)), "acc": list(range(10, 16))},
            ),
        ],
        ids=["records", "list", "dict-of-lists"],
    )
    def test_history_trimmed(
        self, tree: KaggleTree, history: Any, expected: Any
    ) -> None:
        """History comes back cut to epochs <= the resumed epoch."""
        tree.put("working/checkpoints/a.pth", epoch=5, history=history)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert state.history == expected


# --- the three-session story -----------------------------------------------


def _accuracy(epoch: int) -> float:
    return round(0.80 + epoch / 1000, 3)


def _session(
    tree: KaggleTree, *, last_epoch: int, seed: int, prefer_metric: str | None = None
) -> tuple[Any, nn.Module]:
    """One Kaggle session: resume, train to last_epoch, save as the design does."""
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = kr.resume(
        model,
        opt,
        pattern="vqvae_pretrained.pth",
        prefer_metric=prefer_metric,
        root=tree.root,
        verbose=False,
    )
    history = list(state.history or [])
    for epoch in range(state.start_epoch, last_epoch + 1):
        train_step(model, opt)
        history.append({"epoch": epoch, "accuracy": _accuracy(epoch)})
        if epoch % 10 == 0 or epoch == last_epoch:
            for name in (f"checkpoint_{epoch:04d}.pth", "vqvae_pretrained.pth"):
                kr.save_checkpoint(
                    name,
                    model=model,
                    optimizer=opt,
                    epoch=epoch,
                    accuracy=_accuracy(epoch),
                    history=history,
                    root=tree.root,
                )
    return state, model


class TestThreeSessionTimeline:
    def test_design_timeline(self, tree: KaggleTree) -> None:
        """Sessions 1-3 of the design: fresh, resume at 51, resume at 101."""
        first, model1 = _session(tree, last_epoch=50, seed=1)
        assert not first.resumed and first.start_epoch == 0
        tree.upload("hmolqd-run1")
        tree.new_session()

        inputs = snapshot(tree.input)
        probe = make_model(9)
        kr.resume(
            probe,
            pattern="vqvae_pretrained.pth",
            root=tree.root,
            copy=False,
            verbose=False,
        )
        assert same_state(probe.state_dict(), model1.state_dict())
        second, _ = _session(tree, last_epoch=100, seed=2)
        assert second.resumed and second.start_epoch == 51
        assert second.info.source == "input_datasets"
        assert (second.info.epoch, second.info.accuracy) == (50, 0.85)
        assert (
            Path(second.path).resolve()
            == (tree.checkpoints / "vqvae_pretrained.pth").resolve()
        )
        assert snapshot(tree.input) == inputs
        tree.upload("hmolqd-run2")
        tree.new_session()

        third, _ = _session(tree, last_epoch=100, seed=3, prefer_metric="accuracy")
        assert third.resumed and third.start_epoch == 101
        assert (third.info.epoch, third.info.accuracy) == (100, 0.9)
        run2 = tree.input / "hmolqd-run2" / "checkpoints" / "vqvae_pretrained.pth"
        copy = tree.checkpoints / "vqvae_pretrained.pth"
        assert copy.read_bytes() == run2.read_bytes()
        found = sorted((c.epoch, c.is_valid) for c in third.candidates)
        assert found == [(50, True), (100, True)]
        assert [h["epoch"] for h in third.history] == list(range(101))

    def test_no_metric_picks_newer_run(self, tree: KaggleTree) -> None:
        """With two runs attached and no metric, the later epoch wins."""
        tree.put("input/hmolqd-run2/checkpoints/vqvae_pretrained.pth", epoch=100)
        tree.put("input/hmolqd-run1/checkpoints/vqvae_pretrained.pth", epoch=50)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert state.start_epoch == 101

    def test_history_ahead_of_epoch_trimmed(self, tree: KaggleTree) -> None:
        """History saved ahead of its epoch leaves one entry per epoch at the end."""
        model = make_model()
        history = [{"epoch": epoch} for epoch in range(6)]
        kr.save_checkpoint(
            "a.pth", model=model, epoch=3, history=history, root=tree.root
        )
        for _ in range(2):
            state = kr.resume(make_model(), root=tree.root, verbose=False)
            history = list(state.history)
            for epoch in range(state.start_epoch, state.start_epoch + 3):
                history.append({"epoch": epoch})
            kr.save_checkpoint(
                "a.pth",
                model=model,
                epoch=state.start_epoch + 1,
                history=history,
                root=tree.root,
            )
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        epochs = [h["epoch"] for h in state.history]
        assert epochs == list(range(state.start_epoch))


# --- what the user sees ----------------------------------------------------


class TestOutput:
    def _tree(self, tree: KaggleTree) -> None:
        tree.put("working/checkpoints/alpha.pth", epoch=37, accuracy=0.625)
        tree.put("input/run/bravo.pth", epoch=40, accuracy=1.7)

    def test_verbose_false_prints_nothing(
        self, tree: KaggleTree, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """verbose=False prints nothing, even with rejected candidates."""
        self._tree(tree)
        tree.put("working/checkpoints/big.pth", epoch=50, model=make_model(1, 3))
        with bare_logging():
            state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert state.start_epoch == 38
        assert capsys.readouterr() == ("", "")

    def test_verbose_prints_table(
        self, tree: KaggleTree, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """verbose=True with no logging set up prints candidates and the choice."""
        self._tree(tree)
        with bare_logging():
            kr.resume(make_model(), root=tree.root, verbose=True)
        out, err = capsys.readouterr()
        text = out + err
        assert "alpha.pth" in text and "bravo.pth" in text
        assert re.search(r"\b37\b", text) and re.search(r"\b40\b", text)
        assert "Invalid accuracy" in text
        assert len(text.strip().splitlines()) >= 3

    def test_logs_candidates_and_decision(
        self, tree: KaggleTree, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Logger kaggle_resume warns per rejected candidate and reports the epoch."""
        self._tree(tree)
        caplog.set_level(logging.DEBUG, logger="kaggle_resume")
        kr.resume(make_model(), root=tree.root)
        ours = [r for r in caplog.records if r.name.startswith("kaggle_resume")]
        assert any(
            r.levelno == logging.WARNING and "Invalid accuracy" in r.getMessage()
            for r in ours
        )
        assert any(
            r.levelno == logging.INFO and re.search(r"\b37\b", r.getMessage())
            for r in ours
        )


# --- CLI -------------------------------------------------------------------


def run_cli(
    *args: str, env_root: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python kaggle_resume.py ARGS` in a clean environment."""
    env = dict(os.environ)
    env.pop("KAGGLE_RESUME_ROOT", None)
    if env_root is not None:
        env["KAGGLE_RESUME_ROOT"] = str(env_root)
    return subprocess.run(
        [sys.executable, str(MODULE_FILE), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        cwd=MODULE_FILE.parent,
    )


def winner_line(text: str) -> str:
    """The last output line that names the choice."""
    lines = [
        line
        for line in text.splitlines()
        if re.search(r"winner|best|selected|chosen|choice|resume", line, re.IGNORECASE)
    ]
    assert lines, text
    return lines[-1]


class TestCLI:
    def test_help(self) -> None:
        """--help exits 0 and names both commands."""
        proc = run_cli("--help")
        assert proc.returncode == 0, proc.stderr
        assert "scan" in proc.stdout and "demo" in proc.stdout

    def test_scan_finds_valid(self, tree: KaggleTree) -> None:
        """scan prints the table and the winner, exit 0."""
        tree.put("working/checkpoints/alpha.pth", epoch=12, accuracy=0.5)
        tree.put("input/run/bravo.pth", epoch=30, accuracy=1.7)
        proc = run_cli("scan", "--root", str(tree.root))
        assert proc.returncode == 0, proc.stderr
        assert "bravo.pth" in proc.stdout and "Invalid accuracy" in proc.stdout
        assert "alpha.pth" in winner_line(proc.stdout)

    @pytest.mark.parametrize("with_invalid", [True, False], ids=["invalid", "empty"])
    def test_scan_none_valid(self, tree: KaggleTree, with_invalid: bool) -> None:
        """scan exits 1 when no valid checkpoint is found."""
        if with_invalid:
            tree.put("input/run/bad.pth", epoch=-3)
        proc = run_cli("scan", "--root", str(tree.root))
        assert proc.returncode == 1, proc.stdout + proc.stderr

    def test_scan_metric_and_pattern(self, tree: KaggleTree) -> None:
        """--metric and --pattern steer scan's choice."""
        tree.put("working/checkpoints/alpha.pth", epoch=12, val_loss=0.9)
        tree.put("input/run/bravo.pth", epoch=8, val_loss=0.1)
        tree.put("input/run/charlie.ckpt", epoch=9, val_loss=0.05)
        proc = run_cli(
            "scan",
            "--root",
            str(tree.root),
            "--metric",
            "val_loss",
            "--pattern",
            "*.pth",
        )
        assert proc.returncode == 0, proc.stderr
        assert "charlie" not in proc.stdout
        assert "bravo.pth" in winner_line(proc.stdout)
        proc = run_cli(
            "scan",
            "--root",
            str(tree.root),
            "--metric",
            "val_loss",
            "--mode",
            "max",
            "--pattern",
            "*.pth",
        )
        assert "alpha.pth" in winner_line(proc.stdout)

    def test_scan_root_from_env(self, tree: KaggleTree) -> None:
        """scan without --root reads KAGGLE_RESUME_ROOT."""
        tree.put("input/run/bravo.pth", epoch=3)
        proc = run_cli("scan", env_root=tree.root)
        assert proc.returncode == 0, proc.stderr
        assert "bravo.pth" in proc.stdout

    @pytest.mark.parametrize(
        "args",
        [["scan", "--mode", "sideways"], ["frobnicate"]],
        ids=["bad-mode", "bad-command"],
    )
    def test_bad_usage(self, tree: KaggleTree, args: list[str]) -> None:
        """Bad usage exits 2."""
        proc = run_cli(*args, env_root=tree.root)
        assert proc.returncode == 2

    def test_demo(self, tmp_path: Path) -> None:
        """demo runs three sessions; sessions 2 and 3 resume at a later epoch."""
        proc = run_cli("demo", "--root", str(tmp_path / "demo"))
        assert proc.returncode == 0, proc.stderr
        epochs = [
            int(n)
            for n in re.findall(r"resumed at epoch (\d+)", proc.stdout, re.IGNORECASE)
        ]
        assert len(epochs) >= 2 and epochs == sorted(set(epochs)) and epochs[0] > 0
        assert re.search(r"session\s*2", proc.stdout, re.IGNORECASE)
        assert re.search(r"session\s*3", proc.stdout, re.IGNORECASE)
