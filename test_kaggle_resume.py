"""Tests for kaggle_resume.

Every test builds a fake Kaggle tree (working/, input/...) under tmp_path and
fills it with real torch.save files, so the suite runs anywhere with torch.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import dataclasses
import errno
import filecmp
import fnmatch
import hashlib
import importlib
import inspect
import io
import itertools
import json
import logging
import math
import os
import pickle
import random
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import types
import zipfile
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

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

    @pytest.mark.parametrize(
        "rel",
        [
            "input/run/outputs/checkpoints/a.pth",
            "input/datasets/owner/run/run1/ckpt/a.pth",
            "working/samples/checkpoints/a.pth",
        ],
    )
    def test_checkpoints_inside_a_data_folder(self, tree: KaggleTree, rel: str) -> None:
        """A folder of many data files is not read through, but its checkpoints/ is."""
        want = tree.put(rel)
        data = want.parent.parent
        for i in range(600):
            (data / f"{i:05d}.png").touch()
        result = kr.find_checkpoint_locations(root=tree.root)
        assert all_found(result) == [want.resolve()]

    def test_huge_data_folder_skipped_siblings_found(self, tree: KaggleTree) -> None:
        """A leaf folder of 12,000 images costs nothing and hides nothing else."""
        images = tree.input / "run" / "train" / "images"
        images.mkdir(parents=True)
        for i in range(12_000):
            (images / f"{i:05d}.png").touch()
        want = [
            tree.put("input/run/train/checkpoints/a.pth"),
            tree.put("input/run/run1/model.pth"),
        ]
        result = kr.find_checkpoint_locations(root=tree.root)
        assert sorted(all_found(result)) == sorted(p.resolve() for p in want)

    @pytest.mark.parametrize("rel", ["input/run", "input/datasets/owner/run"])
    def test_dataset_root_read_whole(self, tree: KaggleTree, rel: str) -> None:
        """Files directly in a dataset root are found among many data files."""
        root = tree.root / rel
        root.mkdir(parents=True)
        for i in range(600):
            (root / f"{i:05d}.png").touch()
        want = [tree.put(f"{rel}/zz_model.pth"), tree.put(f"{rel}/aa_model.pth")]
        result = kr.find_checkpoint_locations(root=tree.root)
        assert sorted(all_found(result)) == sorted(p.resolve() for p in want)


# --- inspection ------------------------------------------------------------


def _no_zip_listing(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the zip listing was parsed")


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


class _ManyTensors(nn.Module):
    """A model whose state holds more tensors than a plain zip can list."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {f"t{i}": torch.zeros(1) for i in range(self.count)}


def _adam_state() -> dict[str, Any]:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return {"optimizer_state_dict": optimizer.state_dict()}


# Checkpoints of many shapes, each read by the fast inspection routes.
INSPECTED_KINDS = {
    "plain": lambda p: write_checkpoint(p, epoch=4, accuracy=0.75, loss=0.5),
    "numpy": lambda p: write_checkpoint(
        p, epoch=np.int64(3), accuracy=np.float64(0.5), step=np.int32(7)
    ),
    "tensors": lambda p: write_checkpoint(
        p, epoch=torch.tensor(5), accuracy=torch.tensor(0.25), **_adam_state()
    ),
    "metrics": lambda p: write_checkpoint(
        p, epoch=2, metrics={"val_loss": float("nan"), "acc": 0.5}, global_step=9
    ),
    "invalid": lambda p: write_checkpoint(p, epoch=-1, accuracy=1.5),
    "lightning": lambda p: torch.save(
        {
            "epoch": 6,
            "global_step": 60,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": make_model().state_dict(),
            "optimizer_states": [],
            "callbacks": {
                "ModelCheckpoint{'monitor': 'val_loss'}": {
                    "monitor": "val_loss",
                    "current_score": torch.tensor(0.125),
                    "best_model_score": torch.tensor(0.0625),
                }
            },
        },
        p,
    ),
    "saved": lambda p: kr.save_checkpoint(
        p,
        model=make_model(),
        epoch=8,
        step=80,
        accuracy=0.875,
        metrics={"val_loss": 0.5},
        budget=None,
    ),
}


def _slow_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make inspection load every file with torch.load, as a plain script would."""
    monkeypatch.setattr(kr, "_read_meta", lambda path: None)
    monkeypatch.setattr(kr, "_read_structure", lambda path: None)


class TestGetCheckpointInfo:
    @pytest.mark.parametrize("kind", sorted(INSPECTED_KINDS))
    def test_fast_routes_agree_with_torch_load(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
    ) -> None:
        """The fast routes read what torch.load reads, without torch.load."""
        path = tmp_path / f"{kind}.pth"
        INSPECTED_KINDS[kind](path)
        loads: list[Any] = []
        real_load = torch.load
        monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
        fast = kr.get_checkpoint_info(path)
        assert loads == []  # the fast route really ran
        monkeypatch.setattr(torch, "load", real_load)
        _slow_route(monkeypatch)
        slow = kr.get_checkpoint_info(path)
        fields = ("epoch", "step", "accuracy", "metrics", "is_valid", "error", "format")
        for name in fields:
            have, want = getattr(fast, name), getattr(slow, name)
            if name == "metrics":  # NaN never equals itself
                have = {k: "nan" if math.isnan(v) else v for k, v in have.items()}
                want = {k: "nan" if math.isnan(v) else v for k, v in want.items()}
            assert have == want, name
        assert sorted(fast.keys) == sorted(slow.keys)

    def test_saved_summary_read_without_the_zip_listing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A save_checkpoint file is inspected from its end, not its zip listing."""
        path = kr.save_checkpoint(
            tmp_path / "a.pth", model=make_model(), epoch=7, accuracy=0.5, step=3
        )
        monkeypatch.setattr(zipfile, "ZipFile", _no_zip_listing)
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert (info.epoch, info.step, info.accuracy) == (7, 3, 0.5)

    def test_saved_summary_read_from_a_zip64_archive(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """More than 65,535 records (a zip64 archive): still read from the end."""
        path = kr.save_checkpoint(
            tmp_path / "a.pth", model=_ManyTensors(66_000), epoch=9, budget=None
        )
        assert b"PK\x06\x06" in path.read_bytes()[-4096:]  # the zip64 end record
        monkeypatch.setattr(zipfile, "ZipFile", _no_zip_listing)
        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert info.epoch == 9

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


def _allowlist() -> set[str]:
    """torch's process-wide weights_only allowlist (its order means nothing)."""
    return set(map(repr, torch.serialization.get_safe_globals()))


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


TRUNCATED = r"^Load error: .*(?i:truncat|ends early|cut short|EOF)"


@dataclasses.dataclass
class MyConfig:
    """A user class that weights_only loading refuses unless allowed."""

    lr: float = 0.1


# --- helpers ---------------------------------------------------------------


def _temps(folder: Path) -> list[str]:
    """Hidden (temporary) entries in a folder."""
    if not folder.is_dir():
        return []
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def _listing(folder: Path) -> dict[str, bytes]:
    """Every entry of a folder with its bytes (b"" for a non-file)."""
    return {
        path.name: path.read_bytes() if path.is_file() else b""
        for path in sorted(folder.iterdir())
    }


def _fill(model: nn.Module, value: float) -> nn.Module:
    """Set every parameter of a model to one value."""
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(value)
    return model


def _filled_with(model: nn.Module, value: float) -> bool:
    return all(bool(torch.all(p == value)) for p in model.parameters())


def _flip_bit(path: Path, record: str = "data/0") -> None:
    """Flip one bit in the middle of a zip record's data, in place."""
    with zipfile.ZipFile(path) as archive:
        member = next(
            m for m in archive.infolist() if m.filename.endswith("/" + record)
        )
    assert member.compress_type == zipfile.ZIP_STORED
    with open(path, "r+b") as f:
        f.seek(member.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        data_start = member.header_offset + 30 + name_length + extra_length
        spot = data_start + member.file_size // 2 + 1
        f.seek(spot)
        byte = f.read(1)[0]
        f.seek(spot)
        f.write(bytes([byte ^ 0x10]))


def _bytes_said(message: str, word: str) -> int:
    """The number of bytes a message says before a word ("needed", "free")."""
    found = re.search(rf"(\d+) bytes\b[^,;]*?\b{word}\b", message)
    assert found, f"no '<N> bytes ... {word}' in {message!r}"
    return int(found.group(1))


def _fake_free(monkeypatch: pytest.MonkeyPatch, free: Callable[[], int]) -> None:
    """Make shutil.disk_usage report free() bytes free everywhere."""

    def disk_usage(path: Any) -> Usage:
        left = free()
        return Usage(total=10**12, used=10**12 - left, free=left)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def _same_path(a: Path | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b.resolve()


def _candidate(state: kr.ResumeState, name: str) -> kr.CheckpointInfo:
    """The one candidate of a resume whose file has this name."""
    found = [c for c in state.candidates if Path(c.path).name == name]
    assert len(found) == 1, [c.path for c in state.candidates]
    return found[0]


def _tree_state(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Mode, size, mtime, bytes or link target of everything under folder."""
    state: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in os.walk(folder):
        for name in ["", *dirs, *files]:
            path = os.path.join(top, name) if name else top
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content: Any = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            else:
                content = sorted(os.listdir(path))
            key = os.path.relpath(path, folder)
            state[key] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return state


# --- crash safety ----------------------------------------------------------

# A process with torch imported that forks children on request: one child
# saves or copies until it is killed, and the server reports how it ended.
_FORK_SERVER = r"""
import os, shutil, sys, tempfile, time, traceback
import torch
import kaggle_resume as kr


def save_loop(root, first, count, go):
    model = torch.nn.Linear(64, 64)
    if go:
        while not os.path.exists(go):
            time.sleep(0.0005)
    epoch = first
    while count < 0 or epoch < first + count:
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(float(epoch))
        kr.save_checkpoint("checkpoint.pth", model=model, epoch=epoch, root=root)
        epoch += 1


# Warm up first, so a child starts writing at once (lazy imports are done).
with tempfile.TemporaryDirectory() as warm:
    saved = kr.save_checkpoint(
        "warm.pth", model=torch.nn.Linear(64, 64), epoch=0, root=warm
    )
    os.makedirs(os.path.join(warm, "input", "run"))
    src = shutil.copy(saved, os.path.join(warm, "input", "run"))
    kr.copy_checkpoint_to_working(src, root=warm)
    os.remove(saved)
    kr.copy_checkpoint_to_working(src, root=warm)

for line in sys.stdin:
    command, *args = line.rstrip("\n").split("\t")
    if command == "ping":
        print("pong", flush=True)
        continue
    if command == "wait":
        print(os.waitpid(int(args[0]), 0)[1], flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if command == "save":
                save_loop(args[0], int(args[1]), int(args[2]), args[3])
            else:
                kr.copy_checkpoint_to_working(args[0], root=args[1])
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    print(pid, flush=True)
"""


class _ForkServer:
    """Drive _FORK_SERVER: start children, wait for them, read their errors."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "fork-server.log"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(MODULE_FILE.parent), env.get("PYTHONPATH")])
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _FORK_SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                bufsize=0,
            )
        assert self.ask("ping") == "pong"

    def ask(self, *words: Any, timeout: float = 60.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(("\t".join(map(str, words)) + "\n").encode())
        answer = b""
        while not answer.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                pytest.fail(f"fork server gave no answer to {words}: {self.errors()}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                pytest.fail(f"fork server died: {self.errors()}")
            answer += chunk
        return answer.decode().strip()

    def start(self, *words: Any) -> int:
        return int(self.ask(*words))

    def wait(self, pid: int) -> int:
        return int(self.ask("wait", pid))

    def errors(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_ForkServer]:
    """A fork server shared by the kill tests."""
    server = _ForkServer(tmp_path_factory.mktemp("forks"))
    yield server
    server.close()


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _exited_cleanly(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


class TestKilledMidWrite:
    def test_save_killed_at_random_moments(
        self, tree: KaggleTree, fork_server: _ForkServer
    ) -> None:
        """50 kills during save loops: resume always finds a whole checkpoint."""
        rng = random.Random(4)
        path = tree.checkpoints / "checkpoint.pth"
        model = _fill(nn.Linear(64, 64), 0.0)
        kr.save_checkpoint(path.name, model=model, epoch=0, root=tree.root)
        started = time.perf_counter()
        pid = fork_server.start("save", tree.root, 1, 1, "")
        assert _exited_cleanly(fork_server.wait(pid)), fork_server.errors()
        took = time.perf_counter() - started  # spreads the kills; never asserted
        last, mid_write = 1, 0

        for _ in range(50):
            pid = fork_server.start("save", tree.root, last + 1, -1, "")
            time.sleep(rng.uniform(0.0, took * 2.5))
            os.kill(pid, signal.SIGKILL)
            status = fork_server.wait(pid)
            assert _killed(status), fork_server.errors()
            mid_write += bool(_temps(tree.checkpoints))

            listed = kr.find_checkpoint_locations(
                root=tree.root, patterns="*checkpoint.pth*"
            )
            names = [p.name for paths in listed.values() for p in paths]
            assert names == ["checkpoint.pth"]
            target = nn.Linear(64, 64)
            state = kr.resume(target, root=tree.root, verbose=False)
            assert state.resumed and _same_path(state.path, path)
            assert [Path(c.path).name for c in state.candidates] == ["checkpoint.pth"]
            assert all(c.is_valid for c in state.candidates)
            assert state.info is not None and state.info.epoch is not None
            assert state.info.epoch >= last  # the previous one or a newer one
            assert _filled_with(target, float(state.info.epoch))
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None
            last = state.info.epoch

        assert mid_write > 0, "no kill landed mid-write: nothing was proved"
        assert last > 1, "no killed loop ever completed a save: nothing was proved"
        kr.save_checkpoint(path.name, model=model, epoch=last + 1, root=tree.root)
        assert _temps(tree.checkpoints) == []

    def test_copy_killed_at_random_moments(
        self, tree: KaggleTree, fork_server: _ForkServer
    ) -> None:
        """50 kills mid-copy: never a half file under the real name."""
        rng = random.Random(5)
        blob = torch.arange(6_000_000, dtype=torch.float32)  # 24 MB
        src = write_checkpoint(tree.input / "big-run" / "big.pth", epoch=7, blob=blob)
        dst = tree.checkpoints / "big.pth"
        started = time.perf_counter()
        pid = fork_server.start("copy", src, tree.root)
        assert _exited_cleanly(fork_server.wait(pid)), fork_server.errors()
        took = time.perf_counter() - started  # spreads the kills; never asserted
        assert filecmp.cmp(src, dst, shallow=False)
        dst.unlink()
        mid_copy = 0

        for _ in range(50):
            pid = fork_server.start("copy", src, tree.root)
            time.sleep(rng.uniform(0.0, took * 1.2))
            os.kill(pid, signal.SIGKILL)
            status = fork_server.wait(pid)
            assert _killed(status) or _exited_cleanly(status), fork_server.errors()
            mid_copy += bool(_temps(tree.checkpoints))
            assert not dst.exists() or filecmp.cmp(src, dst, shallow=False)

            listed = kr.find_checkpoint_locations(root=tree.root, patterns="*big.pth*")
            assert not [p for p in listed["working"] if p.name != "big.pth"]
            state = kr.resume(make_model(seed=3), root=tree.root, verbose=False)
            assert state.resumed and state.start_epoch == 8
            assert _same_path(state.path, dst)
            assert all(c.is_valid for c in state.candidates)
            assert not [c for c in state.candidates if c.path.name.startswith(".")]
            assert filecmp.cmp(src, dst, shallow=False)
            dst.unlink()

        assert mid_copy > 0, "no kill landed mid-copy: nothing was proved"
        kr.copy_checkpoint_to_working(src, root=tree.root)
        assert _temps(tree.checkpoints) == []

    def test_two_writers_same_name(
        self, tree: KaggleTree, fork_server: _ForkServer
    ) -> None:
        """Two processes saving one name at once leave one complete file."""
        go = tree.root / "go"
        count = 30
        pids = [
            fork_server.start("save", tree.root, first, count, go)
            for first in (1000, 2000)
        ]
        go.touch()
        path = tree.checkpoints / "checkpoint.pth"
        for _ in range(100):  # read while both write: every read is whole
            if path.exists():
                loaded = torch.load(path, weights_only=True)
                values = loaded["model_state_dict"].values()
                assert all(bool(torch.all(t == loaded["epoch"])) for t in values)

        statuses = [fork_server.wait(pid) for pid in pids]
        assert all(_exited_cleanly(s) for s in statuses), fork_server.errors()
        assert sorted(os.listdir(tree.checkpoints)) == ["checkpoint.pth"]
        target = nn.Linear(64, 64)
        state = kr.resume(target, root=tree.root, verbose=False)
        assert state.info is not None
        assert state.info.epoch in (1000 + count - 1, 2000 + count - 1)
        assert _filled_with(target, float(state.info.epoch))
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None


# --- corruption ------------------------------------------------------------


def _write_by(writer: str, tree: KaggleTree, model: nn.Module, epoch: int) -> Path:
    """A checkpoint in working written by torch.save or by save_checkpoint."""
    path = tree.checkpoints / "damaged.pth"
    if writer == "torch.save":
        return write_checkpoint(path, epoch=epoch, model=model)
    return kr.save_checkpoint(path.name, model=model, epoch=epoch, root=tree.root)


@pytest.mark.parametrize("writer", ["torch.save", "save_checkpoint"])
class TestBitFlip:
    def _damaged_and_good(
        self, tree: KaggleTree, writer: str
    ) -> tuple[Path, dict[str, torch.Tensor], nn.Module]:
        damaged_model = make_model(seed=1, out_features=64)
        damaged = _write_by(writer, tree, damaged_model, epoch=9)
        good_model = make_model(seed=2, out_features=64)
        write_checkpoint(tree.input / "run" / "good.pth", epoch=4, model=good_model)
        _flip_bit(damaged)
        loaded = torch.load(damaged, weights_only=True)["model_state_dict"]
        assert not torch.equal(loaded["weight"], damaged_model.weight)
        return damaged, loaded, good_model

    def test_plain_torch_load_misses_it(self, tree: KaggleTree, writer: str) -> None:
        """A flipped bit in tensor data loads silently with plain torch.load."""
        _, loaded, _ = self._damaged_and_good(tree, writer)
        assert torch.isfinite(loaded["weight"]).all()
        assert loaded["weight"].shape == (64, 4)

    def test_resume_rejects_and_falls_back(
        self, tree: KaggleTree, writer: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """resume() rejects the damaged file (Integrity error), takes the next."""
        caplog.set_level(logging.WARNING, logger="kaggle_resume")
        _, _, good_model = self._damaged_and_good(tree, writer)
        target = make_model(seed=3, out_features=64)
        state = kr.resume(target, root=tree.root, verbose=False)
        assert state.resumed and state.start_epoch == 5
        assert same_state(target.state_dict(), good_model.state_dict())
        rejected = _candidate(state, "damaged.pth")
        assert not rejected.is_valid
        assert rejected.error is not None
        assert rejected.error.startswith("Integrity error")
        assert any("Integrity error" in r.getMessage() for r in caplog.records)

    def test_verify_false_loads_it(self, tree: KaggleTree, writer: str) -> None:
        """verify=False skips the check and loads the damaged file."""
        damaged, loaded, _ = self._damaged_and_good(tree, writer)
        target = make_model(seed=3, out_features=64)
        state = kr.resume(target, root=tree.root, verbose=False, verify=False)
        assert state.resumed and state.start_epoch == 10
        assert _same_path(state.path, damaged)
        assert same_state(target.state_dict(), loaded)


# --- bad input -------------------------------------------------------------


def _cut(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        data = write_checkpoint(path, epoch=9).read_bytes()
        path.write_bytes(data[: keep(len(data))])

    return make


def _cut_legacy(path: Path) -> None:
    ckpt = {"epoch": 9, "model_state_dict": make_model().state_dict()}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_file(path: Path) -> None:
    data = random.Random(7).randbytes(4096)
    assert not data.startswith((b"PK", b"\x80"))
    path.write_bytes(data)


def _html_file(path: Path) -> None:
    path.write_bytes(
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1></body></html>\n"
    )


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop.other")
    path.symlink_to(other)
    other.symlink_to(path)


BAD_FILES = [
    pytest.param(lambda p: p.write_bytes(b""), r"^Empty file \(0 bytes\)", id="empty"),
    pytest.param(_cut(lambda n: 10), TRUNCATED, id="cut-to-10-bytes"),
    pytest.param(_cut(lambda n: n // 2), TRUNCATED, id="cut-to-half"),
    pytest.param(_cut(lambda n: n - 100), TRUNCATED, id="last-100-bytes-cut"),
    pytest.param(_random_file, r"^Load error: ", id="random-bytes"),
    pytest.param(_html_file, r"^Load error: .*(?i:html)", id="html-page"),
    pytest.param(lambda p: p.mkdir(), r"^Not a file", id="folder"),
    pytest.param(
        lambda p: p.symlink_to(p.with_name("gone.pth")),
        r"^Not found",
        id="broken-symlink",
    ),
    pytest.param(
        _symlink_loop,
        r"^(Load error|Not found|Not a file): .*(?i:symbolic link|symlink)",
        id="symlink-loop",
    ),
    pytest.param(_cut_legacy, TRUNCATED, id="legacy-cut"),
    pytest.param(
        lambda p: write_checkpoint(p, epoch=9, drop=("model_state_dict",)),
        r"^Missing keys: \['model_state_dict'\]",
        id="no-model-state",
    ),
    *[
        pytest.param(
            lambda p, v=value: write_checkpoint(p, epoch=v),
            rf"^Invalid epoch: {re.escape(repr(value))}",
            id=f"epoch-{value!r}",
        )
        for value in (-1, 1.5, "5", True)
    ],
    *[
        pytest.param(
            lambda p, v=value: write_checkpoint(p, epoch=9, accuracy=v),
            rf"^Invalid accuracy: {re.escape(repr(value))}"
            r".*accuracy must lie in \[0, 1\]",
            id=f"accuracy-{value!r}",
        )
        for value in (math.nan, math.inf, 1.7, -0.1, "0.9", 89.0)
    ],
]


def _mixed_folder(tree: KaggleTree) -> tuple[Path, Path, nn.Module]:
    """input/mixed/checkpoints with one good checkpoint (epoch 3) in it."""
    folder = tree.input / "mixed" / "checkpoints"
    folder.mkdir(parents=True)
    good_model = make_model(seed=1)
    good = write_checkpoint(folder / "good.pth", epoch=3, model=good_model)
    return folder, good, good_model


def _assert_good_chosen(
    state: kr.ResumeState, good: Path, good_model: nn.Module, target: nn.Module
) -> None:
    assert state.resumed and state.start_epoch == 4
    assert state.info is not None and _same_path(state.info.path, good)
    assert same_state(target.state_dict(), good_model.state_dict())


class TestHostileFiles:
    @pytest.mark.parametrize(("make", "reason"), BAD_FILES)
    def test_rejected_and_scan_goes_on(
        self, tree: KaggleTree, make: Callable[[Path], Any], reason: str
    ) -> None:
        """A bad file is rejected with a clear reason; the good one is resumed."""
        folder, good, good_model = _mixed_folder(tree)
        make(folder / "bad.pth")
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        _assert_good_chosen(state, good, good_model, target)
        bad = _candidate(state, "bad.pth")
        assert not bad.is_valid and bad.error is not None
        assert re.search(reason, bad.error), bad.error
        found = kr.get_checkpoint_info(folder / "bad.pth")
        assert not found.is_valid and re.search(reason, found.error or ""), found

    def test_unreadable_file(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file that cannot be opened is rejected as unreadable."""
        folder, good, good_model = _mixed_folder(tree)
        bad = write_checkpoint(folder / "bad.pth", epoch=9)
        denied = os.path.abspath(bad)

        def guard(real: Callable[..., Any]) -> Callable[..., Any]:
            def opener(file: Any, *args: Any, **kwargs: Any) -> Any:
                path = None if isinstance(file, int) else os.fsdecode(file)
                if path is not None and os.path.abspath(path) == denied:
                    raise PermissionError(errno.EACCES, "Permission denied", file)
                return real(file, *args, **kwargs)

            return opener

        monkeypatch.setattr(builtins, "open", guard(builtins.open))
        monkeypatch.setattr(io, "open", guard(io.open))
        monkeypatch.setattr(os, "open", guard(os.open))
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        _assert_good_chosen(state, good, good_model, target)
        error = _candidate(state, "bad.pth").error
        assert error is not None
        assert re.search(r"^Load error: .*Permission denied", error), error

    def test_vanishes_between_listing_and_reading(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file removed right after its folder was listed is 'Not found'."""
        folder, good, good_model = _mixed_folder(tree)
        victim = write_checkpoint(folder / "bad.pth", epoch=9)
        real_scandir = os.scandir

        class Listing:
            def __init__(self, entries: Any) -> None:
                self.entries = entries

            def __enter__(self) -> Any:
                return self.entries.__enter__()

            def __exit__(self, *exc: object) -> Any:
                done = self.entries.__exit__(*exc)
                victim.unlink(missing_ok=True)
                return done

            def __iter__(self) -> Any:
                return iter(self.entries)

            def close(self) -> None:
                self.entries.close()
                victim.unlink(missing_ok=True)

        def scandir(path: Any = ".") -> Any:
            entries = real_scandir(path)
            if not isinstance(path, int) and Path(os.fsdecode(path)) == folder:
                return Listing(entries)
            return entries

        monkeypatch.setattr(os, "scandir", scandir)
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        _assert_good_chosen(state, good, good_model, target)
        error = _candidate(state, "bad.pth").error
        assert error is not None and error.startswith("Not found"), error

    def test_vanishes_between_inspection_and_load(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A chosen file removed before it is loaded: the next one is resumed."""
        folder, good, good_model = _mixed_folder(tree)
        victim = write_checkpoint(folder / "bad.pth", epoch=9)
        real_info = kr.get_checkpoint_info

        def inspect_then_remove(path: Any, **kwargs: Any) -> kr.CheckpointInfo:
            info = real_info(path, **kwargs)
            if Path(path) == victim:
                victim.unlink()
            return info

        monkeypatch.setattr(kr, "get_checkpoint_info", inspect_then_remove)
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        _assert_good_chosen(state, good, good_model, target)
        gone = _candidate(state, "bad.pth")
        assert not gone.is_valid and gone.error, gone
        assert not (tree.checkpoints / "bad.pth").exists()

    def test_non_utf8_name_rejected_and_printable(
        self, tree: KaggleTree, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A damaged file with a non-UTF-8 name: rejected, the summary prints."""
        folder, good, good_model = _mixed_folder(tree)
        data = write_checkpoint(tree.root / "tmp.pth", epoch=9).read_bytes()
        odd = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.pth")
        with open(odd, "wb") as f:
            f.write(data[:50])
        target = make_model(seed=2)
        with bare_logging():
            state = kr.resume(target, root=tree.root, verbose=True)
        out = capsys.readouterr().out
        _assert_good_chosen(state, good, good_model, target)
        bad = [c for c in state.candidates if os.fsencode(c.path) == odd]
        assert len(bad) == 1 and not bad[0].is_valid
        assert re.search(TRUNCATED, bad[0].error or ""), bad[0].error
        assert "good.pth" in out and "caf" in out
        out.encode("utf-8")
        str(state).encode("utf-8")

    def test_non_utf8_name_valid_never_raises(
        self, tree: KaggleTree, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A good checkpoint with a non-UTF-8 name: no exception, it is listed."""
        folder, _, _ = _mixed_folder(tree)
        data = write_checkpoint(tree.root / "tmp.pth", epoch=2).read_bytes()
        odd = os.path.join(os.fsencode(folder), b"run\xff.pth")
        with open(odd, "wb") as f:
            f.write(data)
        with bare_logging():
            state = kr.resume(make_model(seed=2), root=tree.root, verbose=True)
        assert state.resumed
        listed = [c for c in state.candidates if os.fsencode(c.path) == odd]
        assert len(listed) == 1
        assert listed[0].is_valid or listed[0].error
        capsys.readouterr().out.encode("utf-8")
        str(state).encode("utf-8")

    def test_folder_symlink_loop(self, tree: KaggleTree) -> None:
        """A folder symlink loop ends the walk; the good file is found once."""
        folder, good, good_model = _mixed_folder(tree)
        (folder / "again").symlink_to(folder.parent, target_is_directory=True)
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        _assert_good_chosen(state, good, good_model, target)
        assert [Path(c.path).resolve() for c in state.candidates] == [good.resolve()]

    @pytest.mark.parametrize("form", ["zip", "legacy", "pickle"])
    def test_pickle_that_runs_code_never_runs(
        self, tree: KaggleTree, tmp_path: Path, form: str
    ) -> None:
        """A pickle calling os.system is refused and never runs; unsafe would."""
        folder, good, good_model = _mixed_folder(tree)
        marker = tmp_path / f"ran-{form}"
        payload = Exploit(f"touch {shlex.quote(str(marker))}")
        bad = folder / "bad.pth"
        if form == "pickle":
            ckpt = {"epoch": 9, "model_state_dict": {}, "config": payload}
            bad.write_bytes(pickle.dumps(ckpt, protocol=2))
        else:
            ckpt = {
                "epoch": 9,
                "model_state_dict": make_model().state_dict(),
                "config": payload,
            }
            torch.save(ckpt, bad, _use_new_zipfile_serialization=form == "zip")

        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        kr.find_best_checkpoint_across_sources("accuracy", root=tree.root)
        info = kr.get_checkpoint_info(bad)
        assert not marker.exists()
        _assert_good_chosen(state, good, good_model, target)
        error = _candidate(state, "bad.pth").error or ""
        assert error.startswith("Load error") and info.error == error
        if form != "pickle":
            assert "system" in error, error

        if form == "pickle":  # the payload is live: an unsafe load runs it
            pickle.loads(bad.read_bytes())
        else:
            torch.load(bad, weights_only=False)
        assert marker.exists()

    @pytest.mark.parametrize(
        ("value", "short"),
        [
            (MyConfig(lr=0.5), "MyConfig"),
            (collections.defaultdict(int, seen=1), "defaultdict"),
        ],
        ids=["custom-class", "defaultdict"],
    )
    def test_refused_class_named_with_fix(
        self, tree: KaggleTree, value: Any, short: str
    ) -> None:
        """The reason names the refused class and says to pass safe_globals."""
        folder, good, good_model = _mixed_folder(tree)
        write_checkpoint(folder / "bad.pth", epoch=9, config=value)
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        _assert_good_chosen(state, good, good_model, target)
        error = _candidate(state, "bad.pth").error or ""
        full = f"{type(value).__module__}.{type(value).__qualname__}"
        assert error.startswith("Load error") and full in error, error
        assert "safe_globals" in error and short in error, error


# --- odd but valid ---------------------------------------------------------


def _legacy(path: Path, model: nn.Module) -> None:
    ckpt = {"epoch": 5, "accuracy": 0.9, "model_state_dict": model.state_dict()}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)


VALID_ODDITIES = [
    pytest.param(_legacy, id="legacy-format"),
    pytest.param(
        lambda p, m: write_checkpoint(
            p,
            model=m,
            epoch=np.int64(5),
            accuracy=np.float64(0.9),
            loss=np.float32(0.5),
        ),
        id="numpy-scalars",
    ),
    pytest.param(
        lambda p, m: write_checkpoint(
            p, model=m, epoch=5, accuracy=0.9, input_shape=torch.Size([1, 4])
        ),
        id="torch-size",
    ),
    pytest.param(
        lambda p, m: torch.save(
            collections.OrderedDict(
                epoch=5,
                accuracy=0.9,
                model_state_dict=collections.OrderedDict(m.state_dict()),
            ),
            p,
        ),
        id="ordered-dict",
    ),
    pytest.param(
        lambda p, m: write_checkpoint(
            p, model=m, epoch=torch.tensor(5), accuracy=torch.tensor(0.9)
        ),
        id="tensor-epoch-and-accuracy",
    ),
]


class TestOddButValid:
    @pytest.mark.parametrize("make", VALID_ODDITIES)
    def test_valid_and_resumed(
        self, tree: KaggleTree, make: Callable[[Path, nn.Module], Any]
    ) -> None:
        """A valid checkpoint in an unusual form reads and resumes at epoch 6."""
        saved = make_model(seed=1)
        path = tree.input / "run" / "odd.pth"
        path.parent.mkdir(parents=True)
        make(path, saved)
        before = _allowlist()

        info = kr.get_checkpoint_info(path)
        assert info.is_valid, info.error
        assert info.epoch == 5 and type(info.epoch) is int
        assert info.accuracy == pytest.approx(0.9, rel=1e-6)
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False)
        assert state.resumed and state.start_epoch == 6
        assert same_state(target.state_dict(), saved.state_dict())
        assert _allowlist() == before


# --- trust -----------------------------------------------------------------


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every torch.load call."""
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(dict(kwargs))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return calls


def _logged(caplog: pytest.LogCaptureFixture, level: int, text: str) -> bool:
    """Whether kaggle_resume logged text at this level or above."""
    return any(
        r.name == "kaggle_resume" and r.levelno >= level and text in r.getMessage()
        for r in caplog.records
    )


def _config_checkpoint(path: Path, model: nn.Module | None = None) -> Path:
    return write_checkpoint(path, epoch=5, model=model, config=MyConfig(lr=0.5))


class TestWeightsOnly:
    def test_every_load_is_weights_only(
        self, tree: KaggleTree, tmp_path: Path, load_calls: list[dict[str, Any]]
    ) -> None:
        """Every torch.load call of a scan and resume passes weights_only=True."""
        marker = tmp_path / "ran"
        exploit = Exploit(f"touch {shlex.quote(str(marker))}")
        kr.save_checkpoint(model=make_model(), epoch=1, root=tree.root)
        write_checkpoint(tree.input / "a" / "np.pth", epoch=np.int64(2))
        _legacy(tree.input / "a" / "legacy.pth", make_model())
        write_checkpoint(tree.input / "b" / "evil.pth", epoch=30, config=exploit)
        _config_checkpoint(tree.input / "b" / "config.pth")
        write_checkpoint(tree.input / "b" / "dd.pth", config=collections.defaultdict())
        _cut_legacy(tree.input / "b" / "cut.pth")
        write_checkpoint(
            tree.input / "c" / "wide.pth", epoch=40, model=make_model(1, 3)
        )

        for metric in (None, "accuracy", "epoch"):
            kr.find_best_checkpoint_across_sources(metric, root=tree.root)
        for paths in kr.find_checkpoint_locations(root=tree.root).values():
            for path in paths:
                kr.get_checkpoint_info(path)
        state = kr.resume(
            make_model(), root=tree.root, prefer_metric="epoch", verbose=False
        )
        assert state.resumed and state.info is not None
        assert state.info.path.name == "legacy.pth"  # wide.pth did not fit
        assert load_calls, "torch.load was never called: nothing was checked"
        assert all(call.get("weights_only") is True for call in load_calls)
        assert not marker.exists()

    def test_safe_globals_for_that_call_only(
        self,
        tree: KaggleTree,
        load_calls: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """safe_globals allows a class for one call; the allowlist is unchanged."""
        caplog.set_level(logging.INFO, logger="kaggle_resume")
        saved = make_model(seed=1)
        path = _config_checkpoint(tree.input / "run" / "config.pth", saved)
        before = _allowlist()

        assert kr.get_checkpoint_info(path, safe_globals=[MyConfig]).is_valid
        assert _allowlist() == before
        assert not kr.get_checkpoint_info(path).is_valid
        target = make_model(seed=2)
        state = kr.resume(
            target, root=tree.root, verbose=False, safe_globals=[MyConfig]
        )
        assert state.resumed and state.start_epoch == 6
        assert state.checkpoint["config"] == MyConfig(lr=0.5)
        assert same_state(target.state_dict(), saved.state_dict())
        assert _allowlist() == before
        with pytest.raises(pickle.UnpicklingError, match="MyConfig"):
            torch.load(path, weights_only=True)  # still refused process-wide
        assert all(call.get("weights_only") is True for call in load_calls)
        assert _logged(caplog, logging.INFO, "MyConfig")

    def test_trusted_turns_it_off_for_that_call_only(
        self,
        tree: KaggleTree,
        load_calls: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """trusted=True loads with weights_only=False for that call, logged."""
        caplog.set_level(logging.INFO, logger="kaggle_resume")
        saved = make_model(seed=1)
        path = _config_checkpoint(tree.input / "run" / "config.pth", saved)

        assert kr.get_checkpoint_info(path, trusted=True).is_valid
        assert any(call.get("weights_only") is False for call in load_calls)
        load_calls.clear()
        assert not kr.get_checkpoint_info(path).is_valid
        assert all(call.get("weights_only") is True for call in load_calls)
        target = make_model(seed=2)
        state = kr.resume(target, root=tree.root, verbose=False, trusted=True)
        assert state.resumed and state.checkpoint["config"] == MyConfig(lr=0.5)
        assert same_state(target.state_dict(), saved.state_dict())
        assert _logged(caplog, logging.WARNING, "trusted")


class TestInputNeverWritten:
    def test_full_resume_leaves_input_untouched(self, tree: KaggleTree) -> None:
        """Scans, resumes with copy and fallback, copies: input/ stays the same."""
        inp = tree.input
        write_checkpoint(inp / "run-a" / "checkpoints" / "ckpt_0005.pth", epoch=5)
        write_checkpoint(inp / "datasets" / "me" / "run-b" / "ckpt.pth", epoch=8)
        nb = write_checkpoint(inp / "notebooks" / "me" / "nb" / "last.pth", epoch=3)
        write_checkpoint(inp / "models" / "me" / "m" / "pytorch" / "v" / "1" / "m.pt")
        write_checkpoint(inp / "run-c" / "wide.pth", epoch=20, model=make_model(1, 3))
        _cut(lambda n: n // 2)(inp / "run-a" / "cut.pth")
        _legacy(inp / "run-a" / "legacy.pth", make_model())
        write_checkpoint(inp / "run-a" / ".hidden" / "h.pth")
        (inp / "run-a" / "link.pth").symlink_to(inp / "run-a" / "legacy.pth")
        for path in inp.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o555 if path.is_dir() else 0o444)
        before = _tree_state(inp)

        kr.find_checkpoint_locations(root=tree.root)
        for metric in (None, "accuracy", "epoch"):
            kr.find_best_checkpoint_across_sources(metric, root=tree.root)
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        state = kr.resume(
            model, optimizer, root=tree.root, prefer_metric="epoch", verbose=False
        )
        assert state.resumed and state.info is not None
        assert state.info.path.name == "ckpt.pth"  # wide.pth did not fit
        assert _same_path(state.path, tree.checkpoints / "ckpt.pth")
        kr.resume(make_model(), root=tree.root, prefer_metric="epoch", verbose=False)
        kr.copy_checkpoint_to_working(nb, root=tree.root)
        with pytest.raises(ValueError):
            kr.save_checkpoint(
                inp / "run-a" / "x.pth", model=model, epoch=1, root=tree.root
            )
        kr.save_checkpoint(model=model, epoch=9, root=tree.root, keep_last=1)
        assert _tree_state(inp) == before
        for path in inp.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)


# --- disk full -------------------------------------------------------------


class TestOutOfSpace:
    def test_save_refused_when_free_space_short(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Too little free space: ENOSPC naming the bytes, old file kept."""
        first = kr.save_checkpoint(model=make_model(1), epoch=1, root=tree.root)
        before = _listing(tree.checkpoints)
        _fake_free(monkeypatch, lambda: 1000)
        with pytest.raises(OSError) as caught:
            kr.save_checkpoint(model=make_model(2), epoch=2, root=tree.root)
        assert caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert _bytes_said(message, "free") == 1000
        assert _bytes_said(message, "needed") >= first.stat().st_size
        assert _listing(tree.checkpoints) == before
        assert kr.get_checkpoint_info(first).epoch == 1

    def test_copy_refused_when_free_space_short(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A copy that does not fit: ENOSPC with its size, nothing written."""
        src = write_checkpoint(tree.input / "run" / "ckpt.pth", epoch=5)
        write_checkpoint(tree.checkpoints / "ckpt.pth", epoch=2, model=make_model(2))
        before = _listing(tree.checkpoints)
        _fake_free(monkeypatch, lambda: 1000)
        with pytest.raises(OSError) as caught:
            kr.copy_checkpoint_to_working(src, root=tree.root)
        assert caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert _bytes_said(message, "needed") == src.stat().st_size
        assert _bytes_said(message, "free") == 1000
        assert _listing(tree.checkpoints) == before

    @pytest.mark.parametrize("failure", ["oserror-enospc", "torch-runtimeerror"])
    def test_save_disk_fills_midway(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch, failure: str
    ) -> None:
        """A save that fills the disk midway: ENOSPC, no partial, old file kept."""
        first = kr.save_checkpoint(model=make_model(1), epoch=1, root=tree.root)
        before = _listing(tree.checkpoints)
        full = [False]

        def filling_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if hasattr(f, "write"):  # torch.save takes a path or a file object
                f.write(b"PK\x03\x04" + bytes(4096))
            else:
                with open(f, "wb") as out:
                    out.write(b"PK\x03\x04" + bytes(4096))
            full[0] = True
            if failure == "oserror-enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                "failed writing file data/0: file write failed"
            )

        monkeypatch.setattr(torch, "save", filling_save)
        expected_free = 10**9 if failure == "oserror-enospc" else 1000
        _fake_free(monkeypatch, lambda: expected_free if full[0] else 10**9)
        with pytest.raises(OSError) as caught:
            kr.save_checkpoint(model=make_model(2), epoch=2, root=tree.root)
        assert full[0], "the fake torch.save was not used"
        assert caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert _bytes_said(message, "free") == expected_free
        assert _bytes_said(message, "needed") > 0
        assert _listing(tree.checkpoints) == before
        assert kr.get_checkpoint_info(first).epoch == 1

    @pytest.mark.parametrize("where", ["shutil.copyfile", "os.sendfile"])
    def test_copy_disk_fills_midway(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch, where: str
    ) -> None:
        """A copy that fills the disk midway: ENOSPC, no partial, old file kept."""
        src = write_checkpoint(tree.input / "run" / "ckpt.pth", epoch=5)
        write_checkpoint(tree.checkpoints / "ckpt.pth", epoch=2, model=make_model(2))
        before = _listing(tree.checkpoints)
        size = src.stat().st_size
        failed = [False]

        def copyfile(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
            with open(a, "rb") as fin, open(b, "wb") as fout:
                fout.write(fin.read(size // 2))
            failed[0] = True
            raise OSError(errno.ENOSPC, "No space left on device")

        def sendfile(out_fd: int, in_fd: int, offset: Any, count: int) -> int:
            os.write(out_fd, bytes(1000))
            failed[0] = True
            raise OSError(errno.ENOSPC, "No space left on device")

        if where == "shutil.copyfile":
            monkeypatch.setattr(shutil, "copyfile", copyfile)
        else:
            monkeypatch.setattr(kr, "_PROGRESS_BYTES", 0)  # the sendfile loop
            monkeypatch.setattr(os, "sendfile", sendfile)
        _fake_free(monkeypatch, lambda: 10**9)
        with pytest.raises(OSError) as caught:
            kr.copy_checkpoint_to_working(src, root=tree.root)
        assert failed[0], f"the fake {where} was not used"
        assert caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert _bytes_said(message, "needed") == size
        assert _bytes_said(message, "free") == 10**9
        assert _listing(tree.checkpoints) == before


# --- two ranks -------------------------------------------------------------

# Each rank runs this. An audit hook records, per phase, every write and
# every folder listing under the two roots, so the test sees which rank
# discovered, copied and wrote. Results go to rank<N>.json after each phase.
_RANK_WORKER = r"""
import datetime, json, os, sys, time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import kaggle_resume as kr

out, main_root, fresh_root = (Path(arg) for arg in sys.argv[1:4])
roots = (os.fspath(main_root) + os.sep, os.fspath(fresh_root) + os.sep)
# Which arguments of each event name a path that is written.
written = {"os.rename": (0, 1), "shutil.copyfile": (1,), "shutil.copytree": (1,)}
written.update({"os.link": (1,), "os.symlink": (1,)})
for name in ("remove", "mkdir", "rmdir", "utime", "chmod", "truncate"):
    written["os." + name] = (0,)
written["shutil.rmtree"] = (0,)
write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
phase = ["setup"]
events, results = {}, {}


def audit(event, args):
    try:
        if event == "open":
            path, mode, flags = args
            if not ((flags or 0) & write_flags or (mode and set(mode) & set("wax+"))):
                return
            kind, paths = "write", [path]
        elif event in written:
            kind, paths = "write", [args[i] for i in written[event]]
        elif event in ("os.scandir", "os.listdir"):
            kind, paths = "list", args[:1]
        else:
            return
        for path in paths:
            if isinstance(path, int) or path is None:
                continue
            text = os.path.abspath(os.fsdecode(path))
            if (text + os.sep).startswith(roots):
                events.setdefault(phase[0], []).append([kind, event, text])
    except Exception:
        pass


def record(name, **data):
    results[name] = data
    target = out / f"rank{rank}.json"
    target.write_text(json.dumps({"results": results, "events": events}))


def begin(name):
    phase[0] = name
    events.setdefault(name, [])


def seeded(seed):
    torch.manual_seed(seed)
    return nn.Linear(4, 2)


def weights(model):
    return {k: v.detach().reshape(-1).tolist() for k, v in model.state_dict().items()}


dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
rank = dist.get_rank()
sys.addaudithook(audit)

begin("fresh")
state = kr.resume(seeded(1 + rank), root=fresh_root, verbose=False)
record("fresh", resumed=state.resumed, start_epoch=state.start_epoch)

begin("resume")
model = seeded(10 + rank)
optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
state = kr.resume(model, optimizer, root=main_root, verbose=False)
record(
    "resume",
    resumed=state.resumed,
    start_epoch=state.start_epoch,
    path=os.fspath(state.path),
    weights=weights(model),
    lr=optimizer.param_groups[0]["lr"],
)
dist.barrier()

begin("save_all")
path = kr.save_checkpoint("every_rank.pth", model=model, epoch=11, root=main_root)
record("save_all", path=os.fspath(path))
dist.barrier()

begin("save_rank0")
flag = out / "rank0-saved"
if rank == 0:
    kr.save_checkpoint("rank0_only.pth", model=model, epoch=12, root=main_root)
    flag.write_text("saved")
    record("save_rank0", returned=True)
else:
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    record("save_rank0", saw_flag=flag.exists())
dist.barrier()

begin("wrapped")
ddp = DDP(seeded(20 + rank))  # rank 0's weights on every rank
kr.save_checkpoint("wrapped.pth", model=ddp, epoch=2, root=main_root)
plain = seeded(40 + rank)
into_plain = kr.resume(
    plain, root=main_root, pattern="wrapped.pth", copy=False, verbose=False
)
saved_keys = []
if rank == 0:
    folder = main_root / "working" / "checkpoints"
    saved = torch.load(folder / "wrapped.pth", weights_only=True)
    saved_keys = list(saved["model_state_dict"])
    ckpt = {"epoch": 3, "model_state_dict": ddp.state_dict()}
    torch.save(ckpt, folder / "module_prefix.pth")
dist.barrier()
prefixed = seeded(50 + rank)
from_prefixed = kr.resume(
    prefixed, root=main_root, pattern="module_prefix.pth", verbose=False
)
source = seeded(60)
kr.save_checkpoint("plain.pth", model=source, epoch=4, root=main_root)
ddp_back = DDP(seeded(70 + rank))
into_ddp = kr.resume(ddp_back, root=main_root, pattern="plain.pth", verbose=False)
record(
    "wrapped",
    saved_keys=saved_keys,
    ddp=weights(ddp.module),
    into_plain=[into_plain.start_epoch, weights(plain)],
    from_prefixed=[from_prefixed.start_epoch, weights(prefixed)],
    source=weights(source),
    into_ddp=[into_ddp.start_epoch, weights(ddp_back.module)],
)
dist.barrier()
dist.destroy_process_group()
record("done")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _flat(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: v.detach().reshape(-1).tolist() for k, v in state.items()}


@dataclasses.dataclass
class _TwoRanks:
    """What the two rank processes reported, and the trees they worked in."""

    main: KaggleTree
    fresh: KaggleTree
    saved: dict[str, list[float]]
    ranks: list[dict[str, Any]]
    logs: list[str]
    hung: bool

    def phase(self, name: str) -> list[dict[str, Any]]:
        """Each rank's results for a phase; fail when one did not get there."""
        for rank, report in enumerate(self.ranks):
            if name not in report.get("results", {}):
                why = "hung (killed after the timeout)" if self.hung else "failed"
                pytest.fail(
                    f"rank {rank} never finished {name!r}: it {why}\n"
                    + "\n".join(log[-2500:] for log in self.logs)
                )
        return [report["results"][name] for report in self.ranks]

    def events(self, rank: int, name: str) -> list[list[str]]:
        self.phase(name)
        return list(self.ranks[rank]["events"].get(name, []))


@pytest.fixture(scope="class")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> _TwoRanks:
    """Run _RANK_WORKER on two gloo ranks once; a hang is killed and reported."""
    base = tmp_path_factory.mktemp("ddp")
    main, fresh = KaggleTree(base / "main"), KaggleTree(base / "fresh")
    for kaggle in (main, fresh):
        kaggle.working.mkdir(parents=True)
        kaggle.input.mkdir()
    saved = make_model(seed=99)
    run = main.input / "run" / "checkpoints"
    optimizer = torch.optim.SGD(saved.parameters(), lr=0.25, momentum=0.9)
    opt_state = optimizer.state_dict()
    write_checkpoint(
        run / "ckpt.pth", epoch=6, model=saved, optimizer_state_dict=opt_state
    )
    write_checkpoint(run / "older.pth", epoch=2, model=make_model(seed=98))
    script = base / "rank_worker.py"
    script.write_text(_RANK_WORKER)
    out = base / "out"
    out.mkdir()

    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.update(WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env["KAGGLE_RESUME_ROOT"] = str(base / "decoy")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(MODULE_FILE.parent), env.get("PYTHONPATH")])
    )
    argv = [sys.executable, str(script), str(out), str(main.root), str(fresh.root)]
    procs = [
        subprocess.Popen(
            argv,
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    deadline, hung, logs = time.monotonic() + 150, False, []
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung = True
            for other in procs:
                other.kill()
            output, _ = proc.communicate()
        logs.append(f"rank {len(logs)} rc={proc.returncode}:\n" + output.decode())

    ranks = []
    for rank in range(2):
        report = out / f"rank{rank}.json"
        ranks.append(json.loads(report.read_text()) if report.exists() else {})
    return _TwoRanks(main, fresh, _flat(saved.state_dict()), ranks, logs, hung)


class TestTwoRanks:
    def test_no_checkpoint_no_hang(self, two_ranks: _TwoRanks) -> None:
        """With nothing to resume from, every rank starts fresh, none hangs."""
        for report in two_ranks.phase("fresh"):
            assert report == {"resumed": False, "start_epoch": 0}

    def test_same_epoch_and_weights_everywhere(self, two_ranks: _TwoRanks) -> None:
        """Every rank resumes the same checkpoint: same epoch, same weights."""
        reports = two_ranks.phase("resume")
        copy = two_ranks.main.checkpoints / "ckpt.pth"
        for report in reports:
            assert report["resumed"] and report["start_epoch"] == 7
            assert Path(report["path"]).resolve() == copy.resolve()
            assert report["weights"] == two_ranks.saved
            assert report["lr"] == 0.25

    def test_only_rank0_discovers_and_copies(self, two_ranks: _TwoRanks) -> None:
        """Rank 0 alone lists folders and writes the copy; rank 1 only reads."""
        two_ranks.phase("resume")
        copy = two_ranks.main.checkpoints / "ckpt.pth"
        src = two_ranks.main.input / "run" / "checkpoints" / "ckpt.pth"
        assert two_ranks.events(1, "resume") == []
        rank0 = two_ranks.events(0, "resume")
        assert any(kind == "list" for kind, _, _ in rank0)
        assert any(kind == "write" and p == str(copy) for kind, _, p in rank0)
        assert filecmp.cmp(src, copy, shallow=False)
        inputs = str(two_ranks.main.input) + os.sep
        assert not [e for e in rank0 if e[0] == "write" and e[2].startswith(inputs)]
        assert two_ranks.events(1, "fresh") == []
        assert os.listdir(two_ranks.fresh.working) == []

    def test_save_on_every_rank_writes_once(self, two_ranks: _TwoRanks) -> None:
        """save_checkpoint on every rank: rank 0 writes, rank 1 writes nothing."""
        reports = two_ranks.phase("save_all")
        dst = two_ranks.main.checkpoints / "every_rank.pth"
        assert {Path(r["path"]).resolve() for r in reports} == {dst.resolve()}
        assert two_ranks.events(1, "save_all") == []
        rank0 = two_ranks.events(0, "save_all")
        assert any(kind == "write" and p == str(dst) for kind, _, p in rank0)
        info = kr.get_checkpoint_info(dst)
        assert info.is_valid and info.epoch == 11

    def test_save_on_rank0_only_does_not_wait(self, two_ranks: _TwoRanks) -> None:
        """A save called on rank 0 alone returns without waiting for rank 1."""
        rank0, rank1 = two_ranks.phase("save_rank0")
        assert rank0 == {"returned": True} and rank1 == {"saw_flag": True}
        assert two_ranks.events(1, "save_rank0") == []
        dst = two_ranks.main.checkpoints / "rank0_only.pth"
        assert kr.get_checkpoint_info(dst).epoch == 12

    def test_ddp_state_into_plain_model_and_back(self, two_ranks: _TwoRanks) -> None:
        """A DDP model's state loads into a plain model, and a plain one into DDP."""
        reports = two_ranks.phase("wrapped")
        keys = reports[0]["saved_keys"]
        assert keys and not [k for k in keys if k.startswith("module.")]
        for report in reports:
            assert report["ddp"] == reports[0]["ddp"]
            assert report["into_plain"] == [3, reports[0]["ddp"]]
            assert report["from_prefixed"] == [4, reports[0]["ddp"]]
            assert report["into_ddp"] == [5, report["source"]]


# The suite's fixtures: an empty fake Kaggle tree, and a decoy in
# KAGGLE_RESUME_ROOT so that root= must be honoured.

HOUR = 3600.0
PAD_BYTES = 2_000_000  # a checkpoint padded with this many tensor bytes


@pytest.fixture(autouse=True)
def _outside_kaggle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test as outside Kaggle unless it sets the variables itself."""
    for name in ("KAGGLE_KERNEL_RUN_TYPE", "TPU_NAME", "ISTPUVM"):
        monkeypatch.delenv(name, raising=False)


# --- session clock -----------------------------------------------------------


class _Ticker:
    """A time source the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _timed_clock(durations: list[float], left: float) -> kr.SessionClock:
    """A clock that has timed these epochs and has `left` seconds to go."""
    ticker = _Ticker()
    clock = kr.SessionClock(sum(durations) + left, clock=ticker)
    for duration in durations:
        ticker.advance(duration)
        clock.lap()
    assert clock.time_left() == pytest.approx(left)
    return clock


class TestSessionClock:
    def test_kaggle_limit_is_12_hours(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On Kaggle without a TPU the session has 12 hours."""
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        ticker = _Ticker()
        clock = kr.SessionClock(clock=ticker)
        assert clock.limit == pytest.approx(12 * HOUR)
        assert clock.time_left() == pytest.approx(12 * HOUR)
        ticker.advance(2 * HOUR)
        assert clock.time_left() == pytest.approx(10 * HOUR)

    @pytest.mark.parametrize("variable", ["TPU_NAME", "ISTPUVM"])
    def test_kaggle_tpu_limit_is_9_hours(
        self, monkeypatch: pytest.MonkeyPatch, variable: str
    ) -> None:
        """On Kaggle with a TPU attached the session has 9 hours."""
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
        monkeypatch.setenv(variable, "local" if variable == "TPU_NAME" else "1")
        clock = kr.SessionClock(clock=_Ticker())
        assert clock.limit == pytest.approx(9 * HOUR)
        assert clock.time_left() == pytest.approx(9 * HOUR)

    def test_outside_kaggle_never_stops(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without KAGGLE_KERNEL_RUN_TYPE there is no limit, even with TPU_NAME."""
        monkeypatch.setenv("TPU_NAME", "local")
        ticker = _Ticker()
        clock = kr.SessionClock(clock=ticker)
        for _ in range(3):
            ticker.advance(20 * HOUR)
            clock.lap()
        assert clock.limit is None
        assert math.isinf(clock.time_left())
        assert not clock.should_stop()
        assert not clock.should_stop(margin=1e9)

    def test_default_time_source_outside_kaggle(self) -> None:
        """With the real clock and no limit, should_stop is False."""
        clock = kr.SessionClock()
        clock.lap()
        assert math.isinf(clock.time_left())
        assert not clock.should_stop(margin=1e9)

    def test_explicit_limit_outside_kaggle(self) -> None:
        """A limit given outside Kaggle is honoured and stops the run."""
        ticker = _Ticker()
        clock = kr.SessionClock(HOUR, clock=ticker)
        ticker.advance(1000)
        clock.lap()
        assert clock.time_left() == pytest.approx(2600)
        assert not clock.should_stop(margin=600)
        ticker.advance(1000)
        clock.lap()
        assert clock.time_left() == pytest.approx(1600)
        assert clock.should_stop(margin=700)

    def test_explicit_limit_wins_on_kaggle(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A limit passed on Kaggle replaces the 12-hour default."""
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        clock = kr.SessionClock(2 * HOUR, clock=_Ticker())
        assert clock.limit == pytest.approx(2 * HOUR)
        assert clock.time_left() == pytest.approx(2 * HOUR)

    def test_start_given(self) -> None:
        """Time left counts from the start passed in, not from construction."""
        ticker = _Ticker(5000.0)
        clock = kr.SessionClock(HOUR, start=4000.0, clock=ticker)
        assert clock.elapsed() == pytest.approx(1000)
        assert clock.time_left() == pytest.approx(2600)
        ticker.advance(100)
        assert clock.time_left() == pytest.approx(2500)

    def test_start_given_on_kaggle(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On Kaggle, a session that began 11 hours ago has 1 hour left."""
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        ticker = _Ticker()
        clock = kr.SessionClock(start=ticker.now - 11 * HOUR, clock=ticker)
        assert clock.time_left() == pytest.approx(HOUR)

    def test_lap_returns_epoch_duration(self) -> None:
        """lap() returns the time since the previous lap and records it."""
        ticker = _Ticker()
        clock = kr.SessionClock(10 * HOUR, clock=ticker)
        ticker.advance(250)
        assert clock.lap() == pytest.approx(250)
        ticker.advance(400)
        assert clock.lap() == pytest.approx(400)
        assert clock.durations == pytest.approx([250, 400])

    def test_slow_first_epoch_counts(self) -> None:
        """A slow earlier epoch still counts: not only the last duration decides."""
        # mean 1800 s, last 600 s: 1200 s left fits the last, not the mean
        assert _timed_clock([3000, 600], left=1200).should_stop(margin=0)
        assert not _timed_clock([3000, 600], left=2000).should_stop(margin=0)

    def test_slowdown_counts(self) -> None:
        """A last epoch slower than the mean decides: not only the mean."""
        # mean 1050 s, last 2400 s: 1800 s left fits the mean, not the last
        assert _timed_clock([600, 600, 600, 2400], left=1800).should_stop(margin=0)
        assert not _timed_clock([600, 600, 600, 2400], left=2600).should_stop(margin=0)

    def test_margin(self) -> None:
        """The margin is kept free for the save; 600 s by default."""
        clock = _timed_clock([1000], left=1500)
        assert clock.should_stop()  # 1500 - 600 < 1000
        assert clock.should_stop(margin=600)
        assert not clock.should_stop(margin=400)  # 1500 - 400 >= 1000

    def test_margin_alone_before_any_epoch(self) -> None:
        """Before any epoch is timed, only the margin decides."""
        ticker = _Ticker()
        clock = kr.SessionClock(1000, clock=ticker)
        ticker.advance(500)
        assert clock.should_stop(margin=600)
        assert not clock.should_stop(margin=400)

    def test_resume_gives_kaggle_clock(
        self, tree: KaggleTree, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """resume() returns a SessionClock with Kaggle's limit, shown in str()."""
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        tree.put("working/checkpoints/alpha.pth", epoch=4)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert isinstance(state.clock, kr.SessionClock)
        assert state.clock.limit == pytest.approx(12 * HOUR)
        assert re.search(r"time left", str(state), re.I)


# --- rotation ----------------------------------------------------------------


def _save(tree: KaggleTree, name: str, epoch: int, **kwargs: Any) -> Path:
    """save_checkpoint a tiny model under root/working/checkpoints/name."""
    kwargs.setdefault("root", tree.root)
    return kr.save_checkpoint(name, model=make_model(), epoch=epoch, **kwargs)


def _pad() -> dict[str, torch.Tensor]:
    """An extra= entry that makes a checkpoint about PAD_BYTES bigger."""
    return {"pad": torch.zeros(PAD_BYTES // 4)}


def _names(folder: Path, glob: str = "*.pth") -> set[str]:
    """Names of the visible files in folder matching glob."""
    return {p.name for p in folder.glob(glob) if not p.name.startswith(".")}


def _bytes_under(folder: Path) -> int:
    """Bytes of every file under folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class TestRotation:
    def test_keep_last_numbers_not_text(self, tree: KaggleTree) -> None:
        """keep_last sorts checkpoint_9 before checkpoint_10, never by text."""
        for epoch in (8, 9, 10, 11):
            _save(tree, f"checkpoint_{epoch}.pth", epoch, keep_last=2)
        assert _names(tree.checkpoints) == {"checkpoint_10.pth", "checkpoint_11.pth"}

    def test_keep_last_by_stored_epoch(self, tree: KaggleTree) -> None:
        """The epoch stored in the file orders the series, not name or mtime."""
        for number, epoch in ((1, 30), (2, 10), (3, 20)):
            path = tree.put(
                f"working/checkpoints/checkpoint_{number:04d}.pth", epoch=epoch
            )
            os.utime(path, (1_000_000 + number, 1_000_000 + number))
        _save(tree, "checkpoint_0004.pth", 25, keep_last=2)
        assert _names(tree.checkpoints) == {
            "checkpoint_0001.pth",
            "checkpoint_0004.pth",
        }

    def test_newest_and_written_never_removed(self, tree: KaggleTree) -> None:
        """keep_last=1 keeps both the newest by epoch and the file just written."""
        tree.put("working/checkpoints/checkpoint_0009.pth", epoch=9)
        tree.put("working/checkpoints/checkpoint_0005.pth", epoch=5)
        _save(tree, "checkpoint_0010.pth", 3, keep_last=1)
        assert _names(tree.checkpoints) == {
            "checkpoint_0009.pth",
            "checkpoint_0010.pth",
        }

    @pytest.mark.parametrize(
        ("metric", "values", "kept"),
        [
            ("accuracy", [0.5, 0.9, 0.6, 0.7, 0.65], 2),  # the highest
            ("val_loss", [0.3, 0.9, 0.5, 0.6, 0.7], 1),  # a loss: the lowest
        ],
    )
    def test_keep_best(
        self, tree: KaggleTree, metric: str, values: list[float], kept: int
    ) -> None:
        """keep_best keeps the best file beyond keep_last: min for a loss name."""
        for epoch, value in enumerate(values, start=1):
            stored = (
                {"accuracy": value}
                if metric == "accuracy"
                else {"metrics": {metric: value}}
            )
            _save(
                tree,
                f"checkpoint_{epoch:04d}.pth",
                epoch,
                keep_last=2,
                keep_best=metric,
                **stored,
            )
        assert _names(tree.checkpoints) == {
            f"checkpoint_{kept:04d}.pth",
            "checkpoint_0004.pth",
            "checkpoint_0005.pth",
        }

    def test_other_files_untouched(self, tree: KaggleTree) -> None:
        """Other series, other folders and the inputs are never rotated."""
        others = [
            "working/checkpoints/best_0001.pth",
            "working/checkpoints/checkpoint_0001.pt",
            "working/checkpoints/run2/checkpoint_0001.pth",
            "working/checkpoint_0001.pth",
            "input/run/checkpoints/checkpoint_0001.pth",
        ]
        for rel in others:
            tree.put(rel, epoch=0)
        tree.put_bytes("working/checkpoints/notes.txt", b"keep me")
        before = snapshot(tree.root)
        for epoch in (1, 2, 3):
            _save(tree, f"checkpoint_{epoch:04d}.pth", epoch, keep_last=1)
        after = snapshot(tree.root)
        for rel in [*others, "working/checkpoints/notes.txt"]:
            assert after[rel] == before[rel], rel
        assert _names(tree.checkpoints, "checkpoint_*.pth") == {"checkpoint_0003.pth"}

    @pytest.mark.parametrize("where", ["working", "elsewhere"])
    def test_outside_checkpoint_folder_not_rotated(
        self, tree: KaggleTree, tmp_path: Path, where: str
    ) -> None:
        """keep_last rotates nothing outside root/working/checkpoints."""
        folder = tree.working if where == "working" else tmp_path / "elsewhere"
        for epoch in (1, 2, 3):
            kr.save_checkpoint(
                folder / f"checkpoint_{epoch}.pth",
                model=make_model(),
                epoch=epoch,
                root=tree.root,
                keep_last=1,
            )
        assert _names(folder) == {f"checkpoint_{e}.pth" for e in (1, 2, 3)}

    @pytest.mark.parametrize("keep_last", [0, -1])
    def test_keep_last_below_one_refused(
        self, tree: KaggleTree, keep_last: int
    ) -> None:
        """keep_last below 1 is refused before anything is written or removed."""
        tree.put("working/checkpoints/checkpoint_0001.pth", epoch=1)
        before = snapshot(tree.root)
        with pytest.raises(ValueError, match="keep_last"):
            _save(tree, "checkpoint_0002.pth", 2, keep_last=keep_last)
        assert snapshot(tree.root) == before


# --- output budget -----------------------------------------------------------


class TestBudget:
    def _padded_series(
        self, tree: KaggleTree, accuracies: tuple[float | None, ...] = (None,) * 3
    ) -> int:
        """Save checkpoint_0001..3, each about 2 MB; return working's bytes."""
        for epoch, accuracy in enumerate(accuracies, start=1):
            _save(
                tree,
                f"checkpoint_{epoch:04d}.pth",
                epoch,
                extra=_pad(),
                accuracy=accuracy,
                budget=None,
            )
        return _bytes_under(tree.working)

    def test_default_budget_is_20_gb(self) -> None:
        """save_checkpoint's budget defaults to Kaggle's 20 GB."""
        default = inspect.signature(kr.save_checkpoint).parameters["budget"].default
        assert default == 20 * 1000**3

    def test_frees_oldest_of_series_first(self, tree: KaggleTree) -> None:
        """Over the budget with keep_last, the oldest file of the series goes."""
        used = self._padded_series(tree)
        budget = used + 256 * 1024  # the next save needs about 1 MB more
        _save(tree, "checkpoint_0004.pth", 4, keep_last=10, budget=budget)
        assert _names(tree.checkpoints) == {
            "checkpoint_0002.pth",
            "checkpoint_0003.pth",
            "checkpoint_0004.pth",
        }
        assert _bytes_under(tree.working) <= budget

    def test_best_is_not_freed(self, tree: KaggleTree) -> None:
        """The best file by keep_best survives the budget; the next oldest goes."""
        used = self._padded_series(tree, (0.95, 0.5, 0.6))
        _save(
            tree,
            "checkpoint_0004.pth",
            4,
            accuracy=0.4,
            keep_last=10,
            keep_best="accuracy",
            budget=used + 256 * 1024,
        )
        assert _names(tree.checkpoints) == {
            "checkpoint_0001.pth",
            "checkpoint_0003.pth",
            "checkpoint_0004.pth",
        }

    def test_without_keep_last_raises_before_writing(self, tree: KaggleTree) -> None:
        """Without keep_last, passing the budget raises ENOSPC and changes nothing."""
        used = self._padded_series(tree)
        before = snapshot(tree.root)
        with pytest.raises(OSError, match="budget") as caught:
            _save(tree, "checkpoint_0004.pth", 4, budget=used + 256 * 1024)
        assert caught.value.errno == errno.ENOSPC
        assert "keep_last" in str(caught.value)
        assert snapshot(tree.root) == before

    def test_raises_when_freeing_cannot_fit(self, tree: KaggleTree) -> None:
        """When removing the series' old files cannot make room, none is removed."""
        tree.put_bytes("working/data/train.bin", b"\0" * 3_000_000)
        for epoch in (1, 2):
            _save(tree, f"checkpoint_{epoch:04d}.pth", epoch, budget=None)
        budget = _bytes_under(tree.working) + 256 * 1024
        before = snapshot(tree.root)
        with pytest.raises(OSError, match="budget") as caught:
            _save(tree, "checkpoint_0003.pth", 3, keep_last=1, budget=budget)
        assert caught.value.errno == errno.ENOSPC
        assert snapshot(tree.root) == before

    def test_replaced_file_counts_once(self, tree: KaggleTree) -> None:
        """The file a save replaces is not counted on top of the new one."""
        old = _save(tree, "checkpoint.pth", 1, extra=_pad(), budget=None)
        budget = old.stat().st_size + (1 << 20) + 128 * 1024
        with pytest.raises(OSError, match="budget"):
            _save(tree, "other.pth", 2, extra=_pad(), budget=budget)
        _save(tree, "checkpoint.pth", 2, extra=_pad(), budget=budget)
        assert kr.get_checkpoint_info(old).epoch == 2
        assert _names(tree.checkpoints) == {"checkpoint.pth"}

    def test_budget_none_disables(self, tree: KaggleTree) -> None:
        """budget=None saves whatever working already holds."""
        tree.put_bytes("working/data/train.bin", b"\0" * 100_000)
        with pytest.raises(OSError, match="budget"):
            _save(tree, "checkpoint.pth", 1, budget=50_000)
        path = _save(tree, "checkpoint.pth", 1, budget=None)
        assert kr.get_checkpoint_info(path).is_valid


# --- publish -----------------------------------------------------------------


def _metadata(folder: Path) -> Any:
    """The dataset-metadata.json in folder, parsed."""
    return json.loads((folder / "dataset-metadata.json").read_text())


BAD_DATASETS = [
    ("alice/abcde", r"6 to 50", "too-short"),
    ("alice/" + "a" * 51, r"6 to 50", "too-long"),
    ("alice/My-Run-01", r"lowercase", "uppercase"),
    ("alice/my_run_01", r"lowercase", "underscore"),
    ("alice/-my-run-01", r"starting", "leading-hyphen"),
    ("alice/my-run-01-", r"ending", "trailing-hyphen"),
    ("alice/my--run-01", r"single hyphens", "double-hyphen"),
    ("my-run-01", r"OWNER/SLUG", "no-owner"),
    ("/my-run-01", r"user name", "empty-owner"),
    ("alice/my/run-01", r"OWNER/SLUG", "extra-slash"),
]


class TestPublish:
    def test_metadata_content(self, tree: KaggleTree) -> None:
        """publish writes title, id and licence into dataset-metadata.json."""
        _save(tree, "checkpoint.pth", 3)
        kr.publish("alice/my-run-01", root=tree.root)
        meta = _metadata(tree.checkpoints)
        assert set(meta) == {"title", "id", "licenses"}
        assert meta["id"] == "alice/my-run-01"
        assert meta["licenses"] == [{"name": "CC0-1.0"}]
        assert isinstance(meta["title"], str) and 6 <= len(meta["title"]) <= 50

    def test_title_given(self, tree: KaggleTree) -> None:
        """A title passed in is written as it is."""
        _save(tree, "checkpoint.pth", 3)
        kr.publish("alice/my-run-01", title="Run one of many", root=tree.root)
        assert _metadata(tree.checkpoints)["title"] == "Run one of many"

    def test_exact_commands(self, tree: KaggleTree) -> None:
        """The create and version commands name the folder (-p) and message (-m)."""
        folder = tree.working / "my out"
        kr.save_checkpoint(
            folder / "checkpoint.pth", model=make_model(), epoch=3, root=tree.root
        )
        message = "epoch 3, val_loss 0.25"
        commands = kr.publish(
            "alice/my-run-01", message=message, folder=folder, root=tree.root
        )
        quoted = shlex.quote(str(folder))
        assert commands == [
            f"kaggle datasets create -p {quoted}",
            f"kaggle datasets version -p {quoted} -m {shlex.quote(message)}",
        ]
        assert shlex.split(commands[1]) == [
            "kaggle",
            "datasets",
            "version",
            "-p",
            str(folder),
            "-m",
            message,
        ]
        assert _metadata(folder)["id"] == "alice/my-run-01"

    def test_default_folder_and_message(self, tree: KaggleTree) -> None:
        """By default root/working/checkpoints goes up, noted with the newest epoch."""
        _save(tree, "checkpoint_0003.pth", 3)
        _save(tree, "checkpoint_0007.pth", 7)
        create, version = kr.publish("alice/my-run-01", root=tree.root)
        assert shlex.split(create)[-1] == str(tree.checkpoints)
        words = shlex.split(version)
        assert words[words.index("-p") + 1] == str(tree.checkpoints)
        assert re.search(r"\b7\b", words[words.index("-m") + 1])

    def test_dir_mode_zip_with_subfolders(self, tree: KaggleTree) -> None:
        """A folder with subfolders is uploaded with --dir-mode zip."""
        _save(tree, "checkpoint.pth", 3)
        flat = kr.publish("alice/my-run-01", message="m", root=tree.root)
        assert not any("--dir-mode" in command for command in flat)
        tree.put("working/checkpoints/run2/checkpoint.pth", epoch=1)
        nested = kr.publish("alice/my-run-01", message="m", root=tree.root)
        for command in nested:
            words = shlex.split(command)
            assert words[words.index("--dir-mode") + 1] == "zip"

    @pytest.mark.parametrize(
        ("dataset", "reason"),
        [case[:2] for case in BAD_DATASETS],
        ids=[case[2] for case in BAD_DATASETS],
    )
    def test_bad_dataset_refused(
        self, tree: KaggleTree, dataset: str, reason: str
    ) -> None:
        """A dataset name Kaggle would refuse raises ValueError saying why."""
        _save(tree, "checkpoint.pth", 3)
        with pytest.raises(ValueError, match=reason):
            kr.publish(dataset, root=tree.root)
        assert not (tree.checkpoints / "dataset-metadata.json").exists()

    @pytest.mark.parametrize("slug", ["abcdef", "a" * 50, "a1-b2-c3"])
    def test_slug_limits_accepted(self, tree: KaggleTree, slug: str) -> None:
        """Slugs of 6 and 50 characters, digits and single hyphens are accepted."""
        _save(tree, "checkpoint.pth", 3)
        kr.publish(f"alice_b-1/{slug}", title="A fine title", root=tree.root)
        assert _metadata(tree.checkpoints)["id"] == f"alice_b-1/{slug}"

    def test_folder_under_input_refused(self, tree: KaggleTree) -> None:
        """A folder under the read-only root/input is refused."""
        folder = tree.put("input/run/checkpoint.pth", epoch=3).parent
        with pytest.raises(ValueError, match="read-only"):
            kr.publish("alice/my-run-01", folder=folder, root=tree.root)
        assert not (folder / "dataset-metadata.json").exists()

    def test_missing_folder(self, tree: KaggleTree) -> None:
        """A folder that does not exist raises FileNotFoundError."""
        with pytest.raises(FileNotFoundError, match="checkpoint"):
            kr.publish("alice/my-run-01", folder=tree.working / "nope", root=tree.root)

    def test_existing_metadata_kept_as_backup(self, tree: KaggleTree) -> None:
        """A different dataset-metadata.json is kept under a backup name."""
        _save(tree, "checkpoint.pth", 3)
        old = '{"id": "bob/old-run-99", "title": "Old run 99"}\n'
        (tree.checkpoints / "dataset-metadata.json").write_text(old)
        kr.publish("alice/my-run-01", root=tree.root)
        assert _metadata(tree.checkpoints)["id"] == "alice/my-run-01"
        backups = list(tree.checkpoints.glob("dataset-metadata.json?*"))
        assert [b.read_text() for b in backups] == [old]
        kr.publish("alice/my-run-01", root=tree.root)  # same content: no backup
        assert list(tree.checkpoints.glob("dataset-metadata.json?*")) == backups

    def test_cli_prints_commands(self, tree: KaggleTree) -> None:
        """publish on the command line prints both commands and exits 0."""
        _save(tree, "checkpoint.pth", 3)
        proc = run_cli(
            "publish",
            "--dataset",
            "alice/my-run-01",
            "--message",
            "first run",
            "--root",
            str(tree.root),
        )
        assert proc.returncode == 0, proc.stderr
        quoted = shlex.quote(str(tree.checkpoints))
        assert f"kaggle datasets create -p {quoted}" in proc.stdout
        version = f"kaggle datasets version -p {quoted} -m 'first run'"
        assert version in proc.stdout
        assert _metadata(tree.checkpoints)["id"] == "alice/my-run-01"

    def test_cli_bad_slug(self, tree: KaggleTree) -> None:
        """A bad slug on the command line exits 2 with the reason."""
        _save(tree, "checkpoint.pth", 3)
        root = str(tree.root)
        proc = run_cli("publish", "--dataset", "alice/My_Run", "--root", root)
        assert proc.returncode == 2
        assert "My_Run" in proc.stderr and "lowercase" in proc.stderr
        assert not (tree.checkpoints / "dataset-metadata.json").exists()


# --- notebook display ----------------------------------------------------------


class _TableParser(HTMLParser):
    """Collect the header cells and the rows of an HTML table."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[tuple[dict[str, str | None], list[str]]] = []
        self.paragraphs: list[str] = []
        self._cell: list[str] | None = None
        self._in_p = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs), []))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p":
            self._in_p = True
            self.paragraphs.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            (self.header if tag == "th" else self.rows[-1][1]).append(text)
            self._cell = None
        elif tag == "p":
            self._in_p = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_p:
            self.paragraphs[-1] += data


def _parse(markup: str) -> _TableParser:
    """Parse markup; drop the header row from rows."""
    parser = _TableParser()
    parser.feed(markup)
    parser.close()
    parser.rows = [(attrs, cells) for attrs, cells in parser.rows if cells]
    return parser


def _odd_tree(tree: KaggleTree) -> Path:
    """Two working files (the newer epoch wins) and an odd-named bad input."""
    tree.put("working/checkpoints/alpha.pth", epoch=3, accuracy=0.5)
    tree.put("working/checkpoints/bravo.pth", epoch=5, accuracy=0.625)
    tree.put("input/r&d/a<b>.pth", epoch=7, cfg=collections.defaultdict(int))
    tree.put("input/run/charlie.pth", epoch=9, accuracy=1.7)
    return tree.checkpoints / "bravo.pth"


def _lightning(path: Path) -> Path:
    """Write a minimal PyTorch Lightning checkpoint."""
    model = make_model()
    checkpoint = {
        "pytorch-lightning_version": "2.6.0",
        "state_dict": model.state_dict(),
        "optimizer_states": [],
        "epoch": 2,
        "global_step": 30,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


class TestDisplay:
    def test_candidates_html_rows(self, tree: KaggleTree) -> None:
        """_repr_html_ has one row per candidate and the issue's columns."""
        _odd_tree(tree)
        best, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        table = _parse(candidates._repr_html_())
        assert len(table.rows) == len(candidates) == 4
        for column in (
            "location",
            "epoch",
            "step",
            "accuracy",
            "size",
            "valid",
            "reason",
        ):
            assert column in table.header
        where = table.header.index("location")
        shown = sorted(cells[where].rsplit("/", 1)[-1] for _, cells in table.rows)
        assert shown == sorted(c.path.name for c in candidates)

    def test_chosen_row_marked(self, tree: KaggleTree) -> None:
        """Only the chosen candidate's row is marked."""
        chosen = _odd_tree(tree)
        best, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert best == chosen
        table = _parse(candidates._repr_html_())
        where = table.header.index("location")
        marked = [
            cells[where]
            for attrs, cells in table.rows
            if "✔" in cells or "bold" in (attrs.get("style") or "")
        ]
        assert len(marked) == 1 and marked[0].endswith("bravo.pth")
        for attrs, cells in table.rows:
            is_chosen = cells[where].endswith("bravo.pth")
            assert ("✔" in cells) == is_chosen
            assert ("bold" in (attrs.get("style") or "")) == is_chosen

    def test_html_escapes_names_and_reasons(self, tree: KaggleTree) -> None:
        """A path with < and & is escaped in the location and in the reason."""
        _odd_tree(tree)
        _, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        markup = candidates._repr_html_()
        assert "a<b>" not in markup and "r&d" not in markup
        assert "r&amp;d/a&lt;b&gt;.pth" in markup
        table = _parse(markup)
        reason = table.header.index("reason")
        odd = [cells for _, cells in table.rows if "a<b>" in "".join(cells)]
        assert len(odd) == 1
        assert "a<b>.pth" in odd[0][reason]  # the reason names the path
        assert "defaultdict" in odd[0][reason]
        tags = re.findall(r"</?([a-zA-Z]+)", markup)
        assert set(tags) <= {"table", "thead", "tbody", "tr", "th", "td"}

    def test_candidates_plain_table(self, tree: KaggleTree) -> None:
        """str() is a plain table: a header, one line per candidate, no markup."""
        _odd_tree(tree)
        _, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        text = str(candidates)
        lines = text.splitlines()
        assert len(lines) == 1 + len(candidates)
        assert "location" in lines[0] and "reason" in lines[0]
        assert "<td" not in text and "&amp;" not in text
        for name in ("alpha.pth", "bravo.pth", "a<b>.pth", "charlie.pth"):
            assert sum(name in line for line in lines[1:]) == 1, name
        chosen = next(line for line in lines[1:] if "bravo.pth" in line)
        others = [line for line in lines[1:] if "bravo.pth" not in line]
        assert chosen.split()[0] not in {line.split()[0] for line in others}
        assert "Invalid accuracy" in text

    def test_resume_state_display(self, tree: KaggleTree) -> None:
        """ResumeState renders the candidates and the decision, in HTML and text."""
        _odd_tree(tree)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert state.resumed and state.start_epoch == 6
        page = _parse(state._repr_html_())
        assert len(page.rows) == len(state.candidates) == 4
        decision = " ".join(page.paragraphs)
        assert "bravo.pth" in decision and re.search(r"\b6\b", decision)
        text = str(state)
        assert "alpha.pth" in text and "charlie.pth" in text
        assert re.search(r"epoch 6\b", text)
        assert "<td" not in text

    def test_fresh_state_display(self, tree: KaggleTree) -> None:
        """A fresh start says so in both renderings."""
        tree.put("input/run/charlie.pth", epoch=9, accuracy=1.7)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert not state.resumed
        page = _parse(state._repr_html_())
        assert re.search(r"fresh", " ".join(page.paragraphs), re.I)
        assert len(page.rows) == 1
        assert re.search(r"fresh", str(state), re.I)
        assert "Invalid accuracy" in str(state)

    def test_state_shows_session_time_left(self, tree: KaggleTree) -> None:
        """With a limited clock the decision tells the session time left."""
        ticker = _Ticker()
        clock = kr.SessionClock(5 * HOUR, start=ticker.now - HOUR, clock=ticker)
        limited = kr.ResumeState(clock=clock, root=tree.root)
        assert re.search(r"4\.0 ?h", str(limited))
        assert re.search(r"4\.0 ?h", limited._repr_html_())
        unlimited = kr.ResumeState(clock=kr.SessionClock(clock=ticker), root=tree.root)
        assert not re.search(r"time left", str(unlimited), re.I)

    def test_no_format_column_for_torch_only(self, tree: KaggleTree) -> None:
        """Plain torch candidates get no format column."""
        tree.put("working/checkpoints/alpha.pth", epoch=3)
        tree.put("input/run/bravo.pth", epoch=4)
        _, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert "format" not in _parse(candidates._repr_html_()).header
        assert "format" not in str(candidates).splitlines()[0]

    def test_format_column_when_mixed(self, tree: KaggleTree) -> None:
        """Mixed formats add a format column naming each one."""
        tree.put("working/checkpoints/alpha.pth", epoch=3)
        _lightning(tree.input / "run" / "bravo.ckpt")
        _, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        table = _parse(candidates._repr_html_())
        assert "format" in table.header
        where = table.header.index("format")
        formats = sorted(cells[where] for _, cells in table.rows)
        assert formats == ["lightning", "torch"]
        lines = str(candidates).splitlines()
        assert "format" in lines[0]
        assert any("bravo.ckpt" in line and "lightning" in line for line in lines)


# --- copy progress -------------------------------------------------------------


class _FakeBar:
    """Records what a tqdm bar is told."""

    made: ClassVar[list[_FakeBar]] = []

    def __init__(self, *args: Any, total: int | None = None, **kwargs: Any) -> None:
        self.total = total
        self.updates: list[int] = []
        self.closed = False
        _FakeBar.made.append(self)

    def update(self, count: int = 1) -> None:
        self.updates.append(count)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch: pytest.MonkeyPatch) -> list[_FakeBar]:
    """Make `import tqdm.auto` give a module whose bars are recorded."""
    package = types.ModuleType("tqdm")
    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = _FakeBar  # type: ignore[attr-defined]
    package.auto = auto  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm", package)
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    monkeypatch.setattr(_FakeBar, "made", [])
    return _FakeBar.made


def _big_input(tree: KaggleTree, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An input checkpoint well above a lowered progress threshold."""
    monkeypatch.setattr(kr, "_PROGRESS_BYTES", 4096)
    monkeypatch.setattr(kr, "_SEND_BYTES", 64 * 1024)
    return tree.put(
        "input/run/big.pth", epoch=3, pad=torch.arange(200_000, dtype=torch.float32)
    )


class TestCopyProgress:
    def test_tqdm_bar_updates(
        self,
        tree: KaggleTree,
        monkeypatch: pytest.MonkeyPatch,
        fake_tqdm: list[_FakeBar],
    ) -> None:
        """With tqdm.auto importable, one bar gets updates summing to the size."""
        src = _big_input(tree, monkeypatch)
        size = src.stat().st_size
        dst = kr.copy_checkpoint_to_working(src, root=tree.root)
        assert len(fake_tqdm) == 1
        bar = fake_tqdm[0]
        assert bar.total == size
        assert sum(bar.updates) == size and len(bar.updates) > 1
        assert bar.closed
        assert dst.read_bytes() == src.read_bytes()

    def test_log_lines_without_tqdm(
        self,
        tree: KaggleTree,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Without tqdm the copy logs a few INFO progress lines up to 100%."""
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
        src = _big_input(tree, monkeypatch)
        caplog.set_level(logging.INFO, logger="kaggle_resume")
        dst = kr.copy_checkpoint_to_working(src, root=tree.root)
        progress = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("kaggle_resume")
            and r.levelno == logging.INFO
            and re.search(r"\d+\s*%", r.getMessage())
        ]
        assert 2 <= len(progress) <= 12, progress
        assert re.search(r"\b100\s*%", progress[-1])
        assert all("big.pth" in message for message in progress)
        assert dst.read_bytes() == src.read_bytes()

    def test_small_copy_shows_no_progress(
        self, tree: KaggleTree, fake_tqdm: list[_FakeBar]
    ) -> None:
        """A copy below the threshold makes no bar and is still identical."""
        src = tree.put("input/run/small.pth", epoch=3)
        dst = kr.copy_checkpoint_to_working(src, root=tree.root)
        assert fake_tqdm == []
        assert dst.read_bytes() == src.read_bytes()

    def test_resume_copy_with_progress(
        self,
        tree: KaggleTree,
        monkeypatch: pytest.MonkeyPatch,
        fake_tqdm: list[_FakeBar],
    ) -> None:
        """resume() copies a big input with a bar and loads the identical copy."""
        src = _big_input(tree, monkeypatch)
        state = kr.resume(make_model(), root=tree.root, verbose=False)
        assert state.resumed and state.start_epoch == 4
        assert state.path is not None and state.path.read_bytes() == src.read_bytes()
        assert sum(bar.total or 0 for bar in fake_tqdm) >= src.stat().st_size


# --- demo ----------------------------------------------------------------------


class TestSessionDemo:
    def test_demo_clock_and_publish(self, tmp_path: Path) -> None:
        """The demo stops each session by the clock and prints publish commands."""
        proc = run_cli("demo", "--root", str(tmp_path / "demo"))
        assert proc.returncode == 0, proc.stderr
        sections = re.split(r"\n(?==+ *session)", proc.stdout, flags=re.I)[1:]
        assert len(sections) == 3, proc.stdout
        for section in sections:
            assert re.search(r"h left.*stop", section, re.I), section
        for before, after in itertools.pairwise(sections):
            last = max(int(n) for n in re.findall(r"epoch (\d+)", before))
            resumed = re.search(r"resumed at epoch (\d+)", after, re.I)
            assert resumed is not None and int(resumed.group(1)) == last + 1
        creates = re.findall(r"kaggle datasets create -p \S+", proc.stdout)
        versions = re.findall(r"kaggle datasets version -p \S+ -m \S+", proc.stdout)
        assert len(creates) >= 2 and len(versions) >= 2
        kept = list((tmp_path / "demo" / "working" / "checkpoints").glob("*.pth"))
        assert 1 <= len(kept) <= 3  # keep_last=2, plus the best


# The fixtures tree and _decoy_root (autouse) are imported so that pytest finds
# them here; both imports and the file-level noqa go when this file is merged.

REQUIRE_EXTRAS = "KAGGLE_RESUME_REQUIRE_EXTRAS"


# --- helpers ---------------------------------------------------------------


def require_tool(name: str) -> types.ModuleType:
    """Import a test-only tool: skip without it, fail when extras are required."""
    if os.environ.get(REQUIRE_EXTRAS) == "1":
        try:
            return importlib.import_module(name)
        except ImportError as e:
            pytest.fail(
                f"{name} does not import ({e}); {REQUIRE_EXTRAS}=1 says the "
                "test extras must be installed",
                pytrace=False,
            )
    return pytest.importorskip(name)


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Leave the torch, numpy and random RNG states as they were."""
    saved = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


def folder_digest(folder: Path) -> dict[str, str]:
    """The sha256 of every file under folder, by relative path."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(
            path.read_bytes()
        ).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def visible(folder: Path) -> list[str]:
    """Names in folder that are not hidden."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def fail_copy_on(
    monkeypatch: pytest.MonkeyPatch, number: int, error: BaseException
) -> list[str]:
    """Make shutil.copyfile raise error on its number-th call; return the calls."""
    real = shutil.copyfile
    calls: list[str] = []

    def copyfile(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(os.fspath(src))
        if len(calls) == number:
            raise error
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    return calls


@pytest.fixture(autouse=True)
def _clean_source_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No extra source comes from the environment unless a test sets one."""
    monkeypatch.delenv("KAGGLE_RESUME_SOURCES", raising=False)
    monkeypatch.delenv("KAGGLEHUB_CACHE", raising=False)


# --- a real Lightning run --------------------------------------------------

# Added to the real validation loss so that epoch 1 scores best: choosing by
# val_loss then differs from choosing the latest checkpoint.
VAL_OFFSETS = {0: 0.5, 1: 0.0, 2: 0.3}
LIGHTNING_EPOCHS = 3


def lightning_module_class(pl: types.ModuleType) -> type:
    """A LightningModule holding a plain nn.Linear as self.net."""

    class TinyLightning(pl.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("val_loss", loss + VAL_OFFSETS.get(self.current_epoch, 0.3))

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=0.05)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
            return [optimizer], [scheduler]

    return TinyLightning


@dataclasses.dataclass
class LightningRun:
    """What a real Lightning training left: .ckpt files, and how to go on."""

    pl: types.ModuleType
    folder: Path
    module_class: type
    net_state: dict[str, torch.Tensor]
    steps_per_epoch: int

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.ckpt"))

    def load(self, path: Path) -> dict[str, Any]:
        loaded: dict[str, Any] = torch.load(path, weights_only=True)
        return loaded

    def score(self, path: Path, key: str = "current_score") -> float:
        """The ModelCheckpoint score stored in a .ckpt file."""
        callbacks = self.load(path)["callbacks"]
        (state,) = [v for k, v in callbacks.items() if k.startswith("ModelCheck")]
        return float(state[key])

    def loaders(self) -> tuple[Any, Any]:
        gen = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(
            torch.randn(32, 4, generator=gen), torch.randn(32, 2, generator=gen)
        )
        train = torch.utils.data.DataLoader(data, batch_size=8)
        return train, torch.utils.data.DataLoader(data, batch_size=8)

    def trainer(
        self, workdir: Path, max_epochs: int, callbacks: Sequence[Any] = ()
    ) -> Any:
        checkpoint = self.pl.callbacks.ModelCheckpoint(
            dirpath=workdir / "ckpt",
            monitor="val_loss",
            save_top_k=2,
            save_last=True,
        )
        return self.pl.Trainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=max_epochs,
            default_root_dir=workdir,
            callbacks=[checkpoint, *callbacks],
        )


@pytest.fixture(scope="session")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> LightningRun:
    """Train a LightningModule for 3 epochs; keep its .ckpt files."""
    pl = require_tool("pytorch_lightning")
    workdir = tmp_path_factory.mktemp("lightning")
    with kept_rng():
        torch.manual_seed(0)
        run = LightningRun(pl, workdir / "ckpt", lightning_module_class(pl), {}, 0)
        module = run.module_class()
        train, val = run.loaders()
        trainer = run.trainer(workdir, LIGHTNING_EPOCHS)
        trainer.fit(module, train, val)
    run.net_state = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    run.steps_per_epoch = len(train)
    return run


def lightning_tree(tree: KaggleTree, run: LightningRun, rel: str) -> list[Path]:
    """Copy the run's .ckpt files to root/rel; return their paths there."""
    shutil.copytree(run.folder, tree.root / rel)
    return sorted((tree.root / rel).glob("*.ckpt"))


# --- a real Hugging Face Trainer run ---------------------------------------

HF_STEPS = (2, 4, 6, 8)  # save_steps=2, max_steps=8: checkpoint-2 ... checkpoint-8


class TokenDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A few random token sequences with binary labels, as dicts."""

    def __init__(self, size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 32, (size, 6), generator=gen)
        self.labels = torch.randint(0, 2, (size,), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[index],
            "attention_mask": torch.ones(6, dtype=torch.long),
            "labels": self.labels[index],
        }


@dataclasses.dataclass
class TrainerRun:
    """What a real Trainer run left: checkpoint-<step> folders, and how to go on."""

    transformers: types.ModuleType
    folder: Path
    config: Any

    def checkpoint(self, step: int) -> Path:
        return self.folder / f"checkpoint-{step}"

    def state(self, step: int) -> dict[str, Any]:
        text = (self.checkpoint(step) / "trainer_state.json").read_text()
        loaded: dict[str, Any] = json.loads(text)
        return loaded

    def model(self, seed: int = 0) -> Any:
        with kept_rng():
            torch.manual_seed(seed)
            return self.transformers.BertForSequenceClassification(self.config)

    def trainer(
        self,
        output_dir: Path,
        model: Any,
        max_steps: int,
        callbacks: Sequence[Any] = (),
    ) -> Any:
        args = self.transformers.TrainingArguments(
            output_dir=str(output_dir),
            use_cpu=True,
            report_to=[],
            save_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            logging_steps=2,
            disable_tqdm=True,
            max_steps=max_steps,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            learning_rate=1e-2,
            seed=0,
        )
        return self.transformers.Trainer(
            model=model,
            args=args,
            train_dataset=TokenDataset(16, 1),
            eval_dataset=TokenDataset(8, 2),
            callbacks=list(callbacks),
        )


@pytest.fixture(scope="session")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    """Train a tiny BERT classifier for 8 steps, saving every 2 steps."""
    transformers = require_tool("transformers")
    require_tool("accelerate")
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    run = TrainerRun(transformers, tmp_path_factory.mktemp("hf") / "out", config)
    with kept_rng():
        run.trainer(run.folder, run.model(), max_steps=HF_STEPS[-1]).train()
    return run


def trainer_tree(tree: KaggleTree, run: TrainerRun, rel: str) -> list[Path]:
    """Copy the run's checkpoint folders to root/rel; return their paths there."""
    dst = tree.root / rel
    for step in HF_STEPS:
        shutil.copytree(run.checkpoint(step), dst / f"checkpoint-{step}")
    return [dst / f"checkpoint-{step}" for step in HF_STEPS]


def break_folder(folder: Path, how: str) -> None:
    """Damage a checkpoint folder the way an interrupted save or upload does."""
    if how == "no-state":
        (folder / "trainer_state.json").unlink()
    elif how == "bad-json":
        state = folder / "trainer_state.json"
        text = state.read_text()
        state.write_text(text[: len(text) // 2])
    elif how == "no-weights":
        (folder / "model.safetensors").unlink()
    elif how == "garbage-weights":
        header = b"not a json header"
        data = struct.pack("<Q", len(header)) + header
        (folder / "model.safetensors").write_bytes(data)
    elif how == "truncated-weights":
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[:-64])
    else:
        raise AssertionError(how)


BROKEN = {
    "no-state": r"^Missing keys: \['trainer_state\.json'\]",
    "bad-json": r"^Load error: trainer_state\.json is unreadable",
    "no-weights": r"^Missing keys: \['model\.safetensors'\]",
    "garbage-weights": r"^Load error: model\.safetensors has a bad header",
    "truncated-weights": r"^Load error: model\.safetensors is truncated",
}


# --- the extras gate -------------------------------------------------------


class TestRequireTool:
    def test_missing_tool_skips_by_default(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the variable a missing tool skips the test."""
        monkeypatch.delenv(REQUIRE_EXTRAS, raising=False)
        with pytest.raises(pytest.skip.Exception, match="no_such_tool_xyz"):
            require_tool("no_such_tool_xyz")

    def test_missing_tool_fails_when_required(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With KAGGLE_RESUME_REQUIRE_EXTRAS=1 a missing tool fails the test."""
        monkeypatch.setenv(REQUIRE_EXTRAS, "1")
        with pytest.raises(pytest.fail.Exception, match="no_such_tool_xyz"):
            require_tool("no_such_tool_xyz")

    def test_present_tool_imports(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A tool that is installed is returned either way."""
        monkeypatch.setenv(REQUIRE_EXTRAS, "1")
        assert require_tool("json") is json


# --- Lightning -------------------------------------------------------------


class TestLightning:
    def test_ckpt_recognised(
        self, tree: KaggleTree, lightning_run: LightningRun
    ) -> None:
        """Each .ckpt reads as lightning: epoch, global_step, monitored score."""
        paths = lightning_tree(tree, lightning_run, "input/lit-run")
        assert len(paths) == 3
        for path in paths:
            saved = lightning_run.load(path)
            info = kr.get_checkpoint_info(path, root=tree.root)
            assert info.is_valid, info.error
            assert info.error is None
            assert info.format == "lightning"
            assert "model_state_dict" not in info.keys
            assert info.epoch == saved["epoch"]
            assert info.step == saved["global_step"]
            assert info.metrics["val_loss"] == lightning_run.score(path)
            best = lightning_run.score(path, "best_model_score")
            assert info.metrics["best_model_score"] == best

    def test_plain_ckpt_is_torch(self, tree: KaggleTree) -> None:
        """A plain dict saved as .ckpt with a state_dict is not read as lightning."""
        path = tree.put(
            "input/run/plain.ckpt",
            epoch=4,
            drop=("model_state_dict",),
            state_dict=make_model().state_dict(),
        )
        info = kr.get_checkpoint_info(path, root=tree.root)
        assert info.is_valid, info.error
        assert info.format == "torch"

    def test_resume_plain_linear(
        self, tree: KaggleTree, lightning_run: LightningRun
    ) -> None:
        """resume() fills a plain Linear, Adam and StepLR from a Lightning .ckpt."""
        lightning_tree(tree, lightning_run, "input/datasets/owner/lit-run")
        net = make_model(seed=7)
        assert not same_state(net.state_dict(), lightning_run.net_state)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)

        state = kr.resume(net, optimizer, scheduler, root=tree.root, verbose=False)

        assert state.resumed and state.info is not None
        assert state.info.format == "lightning"
        assert state.path is not None and state.path.parent == tree.checkpoints
        saved = lightning_run.load(state.path)
        assert same_state(net.state_dict(), lightning_run.net_state)
        stripped = {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}
        assert same_state(net.state_dict(), stripped)
        assert same_state(optimizer.state_dict(), saved["optimizer_states"][0])
        assert same_state(scheduler.state_dict(), saved["lr_schedulers"][0])
        assert state.start_epoch == saved["epoch"] + 1 == LIGHTNING_EPOCHS
        assert state.start_step == saved["global_step"] + 1

    def test_chosen_path_continues_trainer_fit(
        self, tree: KaggleTree, lightning_run: LightningRun, tmp_path: Path
    ) -> None:
        """The chosen path resumes a real trainer.fit(ckpt_path=...) where it left."""
        pl = lightning_run.pl
        lightning_tree(tree, lightning_run, "input/lit-run")
        state = kr.resume(make_model(seed=7), root=tree.root, verbose=False)
        assert state.path is not None
        saved = lightning_run.load(state.path)

        class Watch(pl.Callback):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                self.batches = 0
                self.start: dict[str, torch.Tensor] = {}

            def on_train_start(self, trainer: Any, module: Any) -> None:
                self.start = {k: v.clone() for k, v in module.state_dict().items()}

            def on_train_batch_end(self, *args: Any) -> None:
                self.batches += 1

        watch = Watch()
        more = 2
        trainer = lightning_run.trainer(
            tmp_path / "more", LIGHTNING_EPOCHS + more, [watch]
        )
        module = lightning_run.module_class()
        trainer.fit(module, *lightning_run.loaders(), ckpt_path=str(state.path))

        assert same_state(watch.start, saved["state_dict"])
        assert watch.batches == more * lightning_run.steps_per_epoch
        expected = saved["global_step"] + more * lightning_run.steps_per_epoch
        assert trainer.global_step == expected
        assert trainer.current_epoch == LIGHTNING_EPOCHS + more

    def test_prefer_val_loss_picks_lowest(
        self, tree: KaggleTree, lightning_run: LightningRun
    ) -> None:
        """prefer_metric="val_loss" picks the file with the lowest monitored score."""
        paths = lightning_tree(tree, lightning_run, "input/lit-run")
        scores = {path: lightning_run.score(path) for path in paths}
        lowest = min(scores, key=scores.__getitem__)
        latest = max(lightning_run.load(path)["epoch"] for path in paths)
        assert lightning_run.load(lowest)["epoch"] != latest  # the run's design

        best, info, _ = kr.find_best_checkpoint_across_sources(
            "val_loss", root=tree.root
        )
        assert best is not None and info is not None
        assert Path(best).resolve() == lowest.resolve()
        assert info.metrics["val_loss"] == scores[lowest]

        best, info, _ = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert info is not None and info.epoch == latest

        _, info, _ = kr.find_best_checkpoint_across_sources(
            "val_loss", mode="max", root=tree.root
        )
        assert info is not None and info.metrics["val_loss"] == max(scores.values())


# --- Hugging Face Trainer --------------------------------------------------

HF_SOURCES = [
    ("working", "working"),
    ("working/checkpoints/hf-run", "working"),
    ("input/hf-run", "input_datasets"),
    ("input/hf-run/run1", "input_datasets"),
    ("input/datasets/owner/hf-run", "input_datasets"),
    ("input/notebooks/owner/hf-nb", "notebook_outputs"),
    ("input/models/owner/bert-tiny/transformers/default/1", "models"),
]


class TestHuggingFace:
    @pytest.mark.parametrize(("rel", "source"), HF_SOURCES)
    def test_folders_found_in_every_source(
        self, tree: KaggleTree, trainer_run: TrainerRun, rel: str, source: str
    ) -> None:
        """checkpoint-<step> folders are candidates there; files inside are not."""
        folders = trainer_tree(tree, trainer_run, rel)
        result = kr.find_checkpoint_locations(root=tree.root)
        assert resolved(result[source]) == resolved(folders)
        assert all_found(result) == resolved(folders)
        for folder in folders:
            info = kr.get_checkpoint_info(folder, root=tree.root)
            assert info.is_valid, info.error
            assert (info.format, info.source) == ("hf_trainer", source)

    def test_folder_found_in_kagglehub_cache(
        self,
        tree: KaggleTree,
        trainer_run: TrainerRun,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A checkpoint folder in the kagglehub cache is an extra candidate."""
        monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "hub"))
        version = tmp_path / "hub/datasets/owner/hf-run/versions/2"
        shutil.copytree(trainer_run.checkpoint(8), version / "checkpoint-8")
        best, info, _ = kr.find_best_checkpoint_across_sources(
            root=tree.root, extra_sources=["kagglehub"]
        )
        assert best is not None and info is not None
        assert Path(best).resolve() == (version / "checkpoint-8").resolve()
        assert (info.format, info.source, info.version) == ("hf_trainer", "extra", 2)

    def test_step_and_metrics_from_trainer_state(
        self, tree: KaggleTree, trainer_run: TrainerRun
    ) -> None:
        """step is global_step; metrics are the log entries at that step."""
        folders = trainer_tree(tree, trainer_run, "input/hf-run")
        eval_losses = set()
        for step, folder in zip(HF_STEPS, folders, strict=True):
            saved = trainer_run.state(step)
            logged = [e for e in saved["log_history"] if e["step"] == step]
            (evaluated,) = [e for e in logged if "eval_loss" in e]
            (trained,) = [e for e in logged if "loss" in e]
            info = kr.get_checkpoint_info(folder, root=tree.root)
            assert info.is_valid, info.error
            assert info.step == saved["global_step"] == step
            assert info.metrics["eval_loss"] == evaluated["eval_loss"]
            assert info.metrics["loss"] == trained["loss"]
            assert info.metrics["epochs_done"] == saved["epoch"]
            done = saved["epoch"]
            assert info.epoch == (math.floor(done) - 1 if done >= 1 else None)
            eval_losses.add(info.metrics["eval_loss"])
        assert len(eval_losses) == len(HF_STEPS)

    def test_prefer_eval_loss(self, tree: KaggleTree, trainer_run: TrainerRun) -> None:
        """prefer_metric="eval_loss" picks the folder with the lowest eval_loss."""
        folders = trainer_tree(tree, trainer_run, "input/hf-run")
        losses = {
            folder: next(
                e["eval_loss"]
                for e in trainer_run.state(step)["log_history"]
                if e["step"] == step and "eval_loss" in e
            )
            for step, folder in zip(HF_STEPS, folders, strict=True)
        }
        best = kr.find_best_checkpoint_across_sources("eval_loss", root=tree.root)[0]
        assert best is not None
        assert Path(best).resolve() == min(losses, key=losses.__getitem__).resolve()

    @pytest.mark.parametrize("how", list(BROKEN))
    def test_broken_folder_invalid(
        self, tree: KaggleTree, trainer_run: TrainerRun, how: str
    ) -> None:
        """A half-written newest folder is rejected with its reason; an older wins."""
        folders = trainer_tree(tree, trainer_run, "input/hf-run")
        break_folder(folders[-1], how)

        info = kr.get_checkpoint_info(folders[-1], root=tree.root)
        assert not info.is_valid
        assert info.error is not None and re.search(BROKEN[how], info.error)

        best, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert best is not None and Path(best).resolve() == folders[-2].resolve()
        (rejected,) = [c for c in candidates if not c.is_valid]
        assert Path(rejected.path).resolve() == folders[-1].resolve()
        assert rejected.error is not None and re.search(BROKEN[how], rejected.error)

    def test_copy_folder(self, tree: KaggleTree, trainer_run: TrainerRun) -> None:
        """copy_checkpoint_to_working copies every file of the folder into working."""
        src = trainer_tree(tree, trainer_run, "input/hf-run")[-1]
        before = folder_digest(src)

        dst = kr.copy_checkpoint_to_working(src, root=tree.root)

        assert dst == tree.checkpoints / "checkpoint-8"
        assert dst.is_dir() and folder_digest(dst) == before
        assert folder_digest(src) == before
        assert visible(tree.checkpoints) == ["checkpoint-8"]
        info = kr.get_checkpoint_info(dst, root=tree.root)
        assert info.is_valid and info.source == "working", info.error

    def test_copy_failure_leaves_nothing(
        self,
        tree: KaggleTree,
        trainer_run: TrainerRun,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A copy that fails on the 3rd file leaves no folder and no candidate."""
        src = trainer_tree(tree, trainer_run, "input/hf-run")[-1]
        before = folder_digest(src)
        calls = fail_copy_on(monkeypatch, 3, OSError(errno.EIO, "injected failure"))

        with pytest.raises(OSError, match="injected failure"):
            kr.copy_checkpoint_to_working(src, root=tree.root)

        assert len(calls) >= 3
        assert not (tree.checkpoints / "checkpoint-8").exists()
        assert list(tree.checkpoints.iterdir()) == []
        assert kr.find_checkpoint_locations(root=tree.root)["working"] == []
        assert folder_digest(src) == before
        best, _, _ = kr.find_best_checkpoint_across_sources(root=tree.root)
        assert best is not None and Path(best).resolve() == src.resolve()

    def test_copy_failure_keeps_folder_there(
        self,
        tree: KaggleTree,
        trainer_run: TrainerRun,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A failed copy leaves a different folder of that name as it was."""
        src = trainer_tree(tree, trainer_run, "input/hf-run")[-1]
        there = tree.checkpoints / "checkpoint-8"
        shutil.copytree(trainer_run.checkpoint(6), there)
        before = folder_digest(there)
        fail_copy_on(monkeypatch, 3, OSError(errno.EIO, "injected failure"))

        with pytest.raises(OSError, match="injected failure"):
            kr.copy_checkpoint_to_working(src, root=tree.root)

        assert visible(tree.checkpoints) == ["checkpoint-8"]
        assert folder_digest(there) == before

    def test_killed_copy_leaves_no_candidate(
        self,
        tree: KaggleTree,
        trainer_run: TrainerRun,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A copy killed midway (no clean-up runs) leaves only a hidden folder."""
        src = trainer_tree(tree, trainer_run, "input/hf-run")[-1]
        with monkeypatch.context() as patch:
            fail_copy_on(patch, 3, OSError(errno.EIO, "killed"))
            patch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
            with pytest.raises(OSError, match="killed"):
                kr.copy_checkpoint_to_working(src, root=tree.root)

        leftovers = list(tree.checkpoints.iterdir())
        assert leftovers and all(p.name.startswith(".") for p in leftovers)
        assert kr.find_checkpoint_locations(root=tree.root)["working"] == []
        dst = kr.copy_checkpoint_to_working(src, root=tree.root)
        assert folder_digest(dst) == folder_digest(src)
        assert kr.find_checkpoint_locations(root=tree.root)["working"] == [dst]

    def test_identical_folder_not_copied_again(
        self,
        tree: KaggleTree,
        trainer_run: TrainerRun,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A byte-identical folder already in working is used without copying."""
        src = trainer_tree(tree, trainer_run, "input/hf-run")[-1]
        dst = kr.copy_checkpoint_to_working(src, root=tree.root)
        inode = dst.stat().st_ino
        calls = fail_copy_on(monkeypatch, 1, OSError(errno.EIO, "copied again"))

        assert kr.copy_checkpoint_to_working(src, root=tree.root) == dst

        assert calls == []
        assert dst.stat().st_ino == inode
        assert visible(tree.checkpoints) == ["checkpoint-8"]

    def test_different_folder_kept_as_backup(
        self, tree: KaggleTree, trainer_run: TrainerRun
    ) -> None:
        """A different folder of that name is kept as a backup, not a candidate."""
        src = trainer_tree(tree, trainer_run, "input/hf-run")[-1]
        older = trainer_run.checkpoint(6)
        shutil.copytree(older, tree.checkpoints / "checkpoint-8")

        dst = kr.copy_checkpoint_to_working(src, root=tree.root)

        assert dst == tree.checkpoints / "checkpoint-8"
        assert folder_digest(dst) == folder_digest(src)
        backups = [n for n in visible(tree.checkpoints) if n != "checkpoint-8"]
        assert len(backups) == 1 and backups[0].startswith("checkpoint-8.bak")
        assert folder_digest(tree.checkpoints / backups[0]) == folder_digest(older)
        working = kr.find_checkpoint_locations(root=tree.root)["working"]
        assert resolved(working) == [dst.resolve()]

    def test_resume_loads_weights_from_copy(
        self, tree: KaggleTree, trainer_run: TrainerRun
    ) -> None:
        """resume() loads the saved weights and returns the copy in working."""
        folders = trainer_tree(tree, trainer_run, "input/datasets/owner/hf-run")
        saved = trainer_run.transformers.BertForSequenceClassification
        reference = saved.from_pretrained(folders[-1]).state_dict()
        model = trainer_run.model(seed=5)
        assert not same_state(model.state_dict(), reference)

        state = kr.resume(model, root=tree.root, verbose=False)

        assert state.resumed and state.info is not None, state.reason
        assert state.info.format == "hf_trainer"
        assert state.path == tree.checkpoints / "checkpoint-8"
        assert folder_digest(state.path) == folder_digest(folders[-1])
        assert same_state(model.state_dict(), reference)
        trainer_state = trainer_run.state(8)
        assert state.start_step == trainer_state["global_step"] + 1
        assert state.history == trainer_state["log_history"]

    def test_trainer_continues_from_copy(
        self, tree: KaggleTree, trainer_run: TrainerRun, tmp_path: Path
    ) -> None:
        """trainer.train(resume_from_checkpoint=state.path) goes on from the copy."""
        transformers = trainer_run.transformers
        folders = trainer_tree(tree, trainer_run, "input/hf-run")
        model = trainer_run.model(seed=5)
        state = kr.resume(model, root=tree.root, verbose=False)
        assert state.path is not None
        shutil.rmtree(folders[0].parent)  # only the copy is left

        class Count(transformers.TrainerCallback):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                self.steps = 0

            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                self.steps += 1

        count = Count()
        trainer = trainer_run.trainer(tmp_path / "more", model, 10, [count])
        with kept_rng():
            output = trainer.train(resume_from_checkpoint=str(state.path))

        assert output.global_step == 10
        assert count.steps == 10 - HF_STEPS[-1]
        assert (tmp_path / "more" / "checkpoint-10").is_dir()


# --- sources beyond /kaggle ------------------------------------------------


def extra_priorities(candidates: list[kr.CheckpointInfo]) -> dict[Path, int]:
    """Priority of each extra-source candidate, by resolved path."""
    return {
        Path(c.path).resolve(): c.priority for c in candidates if c.source == "extra"
    }


class TestExtraSources:
    def test_path_listed_as_extra(self, tree: KaggleTree, tmp_path: Path) -> None:
        """A folder in extra_sources is searched; its files are listed as extra."""
        path = write_checkpoint(tmp_path / "drive/run/ckpt.pth", epoch=2)
        result = kr.find_checkpoint_locations(
            root=tree.root, extra_sources=[tmp_path / "drive"]
        )
        assert resolved(result["extra"]) == [path.resolve()]
        assert all_found(result) == [path.resolve()]
        _, _, candidates = kr.find_best_checkpoint_across_sources(
            root=tree.root, extra_sources=[tmp_path / "drive"]
        )
        assert extra_priorities(candidates) == {path.resolve(): len(kr.SOURCES)}

    @pytest.mark.parametrize(
        ("priority", "extra_epoch", "winner"),
        [
            (None, 9, "working"),
            (0, 9, "extra"),
            (0, 1, "working"),
        ],
        ids=["alone-after-working", "0-higher-epoch-wins", "0-lower-epoch-loses"],
    )
    def test_priority_against_working(
        self,
        tree: KaggleTree,
        tmp_path: Path,
        priority: int | None,
        extra_epoch: int,
        winner: str,
    ) -> None:
        """An extra source ties with working at priority 0; the epoch decides."""
        working = tree.put("working/checkpoints/w.pth", epoch=5)
        extra = write_checkpoint(tmp_path / "drive/e.pth", epoch=extra_epoch)
        drive = tmp_path / "drive"
        item: Any = drive if priority is None else (drive, priority)
        best, info, _ = kr.find_best_checkpoint_across_sources(
            root=tree.root, extra_sources=[item]
        )
        assert best is not None and info is not None
        expected = working if winner == "working" else extra
        assert Path(best).resolve() == expected.resolve()
        assert info.source == winner

    def test_default_priority_after_models(
        self, tree: KaggleTree, tmp_path: Path
    ) -> None:
        """An extra source alone ranks after every Kaggle source, models included."""
        model = tree.put("input/models/o/m/pytorch/default/1/a.pth", epoch=1)
        write_checkpoint(tmp_path / "drive/e.pth", epoch=50)
        best, _, _ = kr.find_best_checkpoint_across_sources(
            root=tree.root, extra_sources=[tmp_path / "drive"]
        )
        assert best is not None and Path(best).resolve() == model.resolve()

    def test_glob(self, tree: KaggleTree, tmp_path: Path) -> None:
        """A glob in extra_sources searches every folder it matches, and no other."""
        one = write_checkpoint(tmp_path / "drive/run1/a.pth")
        two = write_checkpoint(tmp_path / "drive/run2/b.pth")
        write_checkpoint(tmp_path / "drive/other/c.pth")
        result = kr.find_checkpoint_locations(
            root=tree.root, extra_sources=[(str(tmp_path / "drive/run*"), 2)]
        )
        assert resolved(result["extra"]) == resolved([one, two])

    def test_environment_variable(
        self, tree: KaggleTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """KAGGLE_RESUME_SOURCES holds os.pathsep-separated PATH or PATH=PRIORITY."""
        plain = write_checkpoint(tmp_path / "drive/a.pth", epoch=9)
        ranked = write_checkpoint(tmp_path / "local/b.pth", epoch=3)
        globbed = write_checkpoint(tmp_path / "runs/r7/c.pth", epoch=1)
        entries = [
            str(tmp_path / "drive"),
            f"{tmp_path / 'local'}=0",
            f"{tmp_path / 'runs' / 'r*'}=2",
        ]
        monkeypatch.setenv("KAGGLE_RESUME_SOURCES", os.pathsep.join(entries))

        best, _, candidates = kr.find_best_checkpoint_across_sources(root=tree.root)

        assert extra_priorities(candidates) == {
            plain.resolve(): len(kr.SOURCES),
            ranked.resolve(): 0,
            globbed.resolve(): 2,
        }
        assert best is not None and Path(best).resolve() == ranked.resolve()

    def test_environment_adds_to_argument(
        self, tree: KaggleTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Sources from the variable and from extra_sources are both searched."""
        one = write_checkpoint(tmp_path / "drive/a.pth")
        two = write_checkpoint(tmp_path / "local/b.pth")
        monkeypatch.setenv("KAGGLE_RESUME_SOURCES", str(tmp_path / "local"))
        result = kr.find_checkpoint_locations(
            root=tree.root, extra_sources=[tmp_path / "drive"]
        )
        assert resolved(result["extra"]) == resolved([one, two])

    @pytest.mark.parametrize("versions", [(1, 3), (9, 10)], ids=["1-3", "9-10"])
    @pytest.mark.parametrize("how", ["argument", "variable", "home"])
    def test_kagglehub_highest_version_wins_tie(
        self,
        tree: KaggleTree,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        versions: tuple[int, int],
        how: str,
    ) -> None:
        """The kagglehub cache is searched; a tie goes to the higher version."""
        if how == "home":
            monkeypatch.setenv("HOME", str(tmp_path / "home"))
            hub = tmp_path / "home/.cache/kagglehub"
        else:
            hub = tmp_path / "hub"
            monkeypatch.setenv("KAGGLEHUB_CACHE", str(hub))
        low, high = (
            hub / f"datasets/owner/my-run/versions/{n}/checkpoints/ckpt.pth"
            for n in versions
        )
        write_checkpoint(low, epoch=4, accuracy=0.5)
        high.parent.mkdir(parents=True)
        high.write_bytes(low.read_bytes())
        os.utime(high, (1_000_000, 1_000_000))  # the lower version is newer
        extra: list[Any] | None = ["kagglehub"]
        if how == "variable":
            monkeypatch.setenv("KAGGLE_RESUME_SOURCES", "kagglehub")
            extra = None

        best, info, candidates = kr.find_best_checkpoint_across_sources(
            root=tree.root, extra_sources=extra
        )

        assert sorted(c.version for c in candidates if c.is_valid) == list(versions)
        assert best is not None and info is not None
        assert Path(best).resolve() == high.resolve()
        assert info.version == versions[1] and info.source == "extra"

    def test_resume_copies_from_extra_source(
        self, tree: KaggleTree, tmp_path: Path
    ) -> None:
        """resume() from an extra source loads it and copies it into working."""
        saved = make_model(seed=3)
        write_checkpoint(tmp_path / "drive/run.pth", epoch=6, model=saved)
        model = make_model(seed=4)
        state = kr.resume(
            model, root=tree.root, extra_sources=[tmp_path / "drive"], verbose=False
        )
        assert state.resumed and state.start_epoch == 7
        assert state.path == tree.checkpoints / "run.pth"
        assert state.path.is_file()
        assert same_state(model.state_dict(), saved.state_dict())


# --- three formats side by side --------------------------------------------


@dataclasses.dataclass
class MixedTree:
    """A Kaggle tree with a plain, a Lightning and a Hugging Face run."""

    tree: KaggleTree
    plain: Path
    lightning: list[Path]
    hf: list[Path]


@pytest.fixture
def mixed(
    tree: KaggleTree, lightning_run: LightningRun, trainer_run: TrainerRun
) -> MixedTree:
    """Plain torch in a dataset, Lightning in a notebook output, HF in a model."""
    plain = tree.put("input/datasets/owner/plain-run/model.pth", epoch=0)
    lit = lightning_tree(tree, lightning_run, "input/notebooks/owner/lit-nb")
    hf = trainer_tree(
        tree, trainer_run, "input/models/owner/bert-tiny/transformers/default/1"
    )
    return MixedTree(tree, plain, lit, hf)


def best_line_path(stdout: str) -> str:
    """The path named by scan's "Best:" line."""
    found = re.search(r"^Best: '(.+?)'", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


class TestMixedFormats:
    def test_find_best_returns_all_formats(self, mixed: MixedTree) -> None:
        """find_best lists every candidate of the three formats, all valid."""
        root = mixed.tree.root
        best, info, candidates = kr.find_best_checkpoint_across_sources(root=root)

        expected = resolved([mixed.plain, *mixed.lightning, *mixed.hf])
        assert sorted(resolved([c.path for c in candidates])) == sorted(expected)
        assert all(c.is_valid for c in candidates), [c.error for c in candidates]
        formats = {Path(c.path).resolve(): c.format for c in candidates}
        assert formats[mixed.plain.resolve()] == "torch"
        assert {formats[p.resolve()] for p in mixed.lightning} == {"lightning"}
        assert {formats[p.resolve()] for p in mixed.hf} == {"hf_trainer"}
        assert best is not None and Path(best).resolve() == mixed.plain.resolve()

        _, info, _ = kr.find_best_checkpoint_across_sources("epoch", root=root)
        assert info is not None
        assert (info.format, info.epoch) == ("lightning", LIGHTNING_EPOCHS - 1)

    def test_scan_lists_and_ranks_all_formats(self, mixed: MixedTree) -> None:
        """scan shows every format in its table and picks by the usual rules."""
        root = mixed.tree.root
        proc = run_cli("scan", "--root", str(root))
        assert proc.returncode == 0, proc.stderr
        header = proc.stdout.splitlines()[1]
        assert "format" in header.split()
        for path in [mixed.plain, *mixed.lightning, *mixed.hf]:
            assert os.path.relpath(path, root) in proc.stdout
        lines = proc.stdout.splitlines()
        rows = [line for line in lines[2:] if not line.startswith("Best:")]
        assert len(rows) == 1 + len(mixed.lightning) + len(mixed.hf)
        for fmt in ("torch", "lightning", "hf_trainer"):
            assert any(fmt in row.split() for row in rows), fmt
        (chosen,) = [row for row in rows if row.startswith("*")]
        assert os.path.relpath(mixed.plain, root) in chosen
        assert Path(best_line_path(proc.stdout)).resolve() == mixed.plain.resolve()

        proc = run_cli("scan", "--root", str(root), "--metric", "epoch")
        assert proc.returncode == 0, proc.stderr
        winner = Path(best_line_path(proc.stdout)).resolve()
        assert winner in resolved(mixed.lightning)
