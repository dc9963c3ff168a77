"""Benchmark kaggle_resume against the plain way of doing the same work.

Five targets, each a pair A (the baseline) and B (kaggle_resume):

1. inspect: get_checkpoint_info vs torch.load(weights_only=True) of a ~1 GB
   checkpoint of model + Adam state (~3,300 tensors), one written by
   torch.save and one by save_checkpoint: time, bytes read, peak RSS growth.
2. discover: find_checkpoint_locations vs glob("**/*.pth", recursive=True)
   over a root with 3 datasets of 100,000 data files and a checkpoint in
   every supported layout; it must find exactly those checkpoints.
3. copy: copy_checkpoint_to_working vs cp of a 1 GB checkpoint.
4. resume: resume() over four 1 GB candidates vs torch.load of the known
   path + model and optimizer load_state_dict: time and peak RSS.
5. import: python -c "import torch, kaggle_resume" vs "import torch".

Every file is built in a temporary folder that is removed at the end. Each
measurement runs in a fresh process; A and B run alternately (a warm-up
round, then --rounds rounds), and the page cache is left alone, so both
see the same conditions. Prints the machine, a table of medians with
PASS/FAIL per target, and writes every raw number to a JSON file; exits 1
when a check fails. The goals are set for 1 GB files: in a --quick smoke
run, fixed costs weigh more and some of them fail.

    python benchmarks/bench.py                 # full sizes, ~7 min on 2 cores
    python benchmarks/bench.py --quick         # 100 MB files, a smoke run
    python benchmarks/bench.py --only copy,resume --rounds 7 --profile
    python -m nox -s bench -- --quick
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import glob
import importlib.metadata
import io
import json
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "bench.json"
TARGETS = ("inspect", "discover", "copy", "resume", "import")
PROFILE_ENV = "KAGGLE_RESUME_BENCH_PROFILE"
MB = 1_000_000


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big the fixtures are, and how many rounds each pair runs."""

    tensors: int  # parameter tensors of the model; Adam adds 3 per parameter
    numel: int  # float32 elements in each parameter tensor
    data_files: int  # data files in each of the three datasets
    rounds: int


FULL = Sizes(tensors=830, numel=100_000, data_files=100_000, rounds=5)
QUICK = Sizes(tensors=830, numel=10_000, data_files=10_000, rounds=3)

# The four resume candidates: where each lies under root, its epoch, and
# whether torch.save ("plain") or save_checkpoint ("saved") wrote it. All are
# input datasets, so resume must read every epoch to choose run-d (epoch 40).
CANDIDATES = (
    ("input/run-a/model.pth", 10, "plain"),
    ("input/run-b/checkpoints/model.pth", 20, "plain"),
    ("input/datasets/me/run-c/checkpoints/model.pth", 30, "saved"),
    ("input/datasets/me/run-d/run1/checkpoints/model.pth", 40, "saved"),
)
INSPECTED = {"plain": CANDIDATES[1][0], "saved": CANDIDATES[3][0]}
COPIED = CANDIDATES[0][0]
RESUMED = CANDIDATES[3]

# The discovery tree: a checkpoint in every supported layout, and the source
# find_checkpoint_locations must file it under.
LAYOUTS = {
    "working/checkpoints/last.pth": "working",
    "working/model.pt": "working",
    "input/flat-run/model.pth": "input_datasets",
    "input/ckpt-run/checkpoints/epoch_3.ckpt": "input_datasets",
    "input/runs/run1/checkpoints/epoch_5.pth": "input_datasets",
    "input/cats-vs-dogs/checkpoints/pretrained.pth": "input_datasets",
    "input/d/alice/collide/model.pth": "input_datasets",
    "input/datasets/bob/nested/checkpoints/best.pth": "input_datasets",
    "input/datasets/bob/nested/run1/checkpoints/last.pth": "input_datasets",
    "input/notebooks/carol/train-nb/model.pth": "notebook_outputs",
    "input/notebooks/carol/train-nb/checkpoints/epoch_9.pth": "notebook_outputs",
    "input/models/dave/resnet/pytorch/default/1/model.pth": "models",
}
# Checkpoint names where none may be found: competition data, hidden folders.
DECOYS = (
    "input/competitions/titanic/baseline.pth",
    "input/flat-run/.cache/old.pth",
)
# The data: (dataset folder, number of subfolders the files are split into).
DATASETS = (
    ("input/cats-vs-dogs/train/images", 1),
    ("input/datasets/erin/xray/train", 3),
    ("input/d/frank/birds/images", 5),
)


# --- Worker: one measurement in a fresh process ----------------------------


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), 0 where missing."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _proc_io() -> dict[str, int]:
    """The counters of /proc/self/io (rchar, read_bytes, ...); {} where absent."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name: int(value) for name, value in pairs}


def _reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _profiled(call: Callable[[], Any]) -> Any:
    """Run call under cProfile and write the top functions to stderr."""
    profile = cProfile.Profile()
    result = profile.runcall(call)
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text).sort_stats("cumulative")
    stats.print_stats(25)
    stats.print_stats(r"kaggle_resume\.py", 15)
    sys.stderr.write(text.getvalue())
    return result


def _measure(
    call: Callable[[], Any], describe: Callable[[Any], Any] = lambda _: None
) -> dict[str, Any]:
    """Run call once: its seconds, bytes read, RSS before and peak RSS during.

    The peak is read while the result is still alive; describe(result) turns
    it into something JSON can hold, after the measurement.
    """
    gc.collect()
    reset = _reset_peak_rss()
    rss_kb = _status_kb("VmRSS")
    io_before = _proc_io()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    profile = bool(os.environ.get(PROFILE_ENV))

    start = time.perf_counter()
    result = _profiled(call) if profile else call()
    seconds = time.perf_counter() - start

    io_after = _proc_io()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = _status_kb("VmHWM") if reset else usage.ru_maxrss
    delta = {name: io_after[name] - io_before.get(name, 0) for name in io_after}
    return {
        "seconds": seconds,
        "rchar": delta.get("rchar"),
        "read_bytes": delta.get("read_bytes"),
        "minor_faults": usage.ru_minflt - faults_before,
        "rss_before": rss_kb * 1024,
        "peak_rss": peak_kb * 1024,
        "rss_growth": max(0, peak_kb - rss_kb) * 1024,
        "peak_reset": reset,
        "result": describe(result),
    }


def _model(tensors: int, numel: int) -> Any:
    """The benchmark's model: a ParameterList of float32 tensors."""
    import torch

    return torch.nn.ParameterList(
        torch.nn.Parameter(torch.zeros(numel)) for _ in range(tensors)
    )


def _count_tensors(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_count_tensors(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(value) for value in obj)
    return 0


def _describe_info(info: Any) -> dict[str, Any]:
    return {"epoch": info.epoch, "is_valid": info.is_valid, "error": info.error}


def _work_build(root: str, stage: str, tensors: str, numel: str) -> dict[str, Any]:
    """Write the four resume candidates: model + Adam state after one step."""
    import torch

    import kaggle_resume

    torch.manual_seed(0)
    model = _model(int(tensors), int(numel))
    for parameter in model:
        parameter.data.normal_()
        parameter.grad = torch.ones_like(parameter)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    files = []
    for relative, epoch, writer in CANDIDATES:
        model[0].data.fill_(epoch)  # the candidates differ in their bytes too
        dst = Path(root, relative)
        dst.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(stage, "model.pth")
        step, accuracy = epoch * 100, 0.5 + epoch / 100
        if writer == "plain":
            checkpoint = {
                "epoch": epoch,
                "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "metrics": {"loss": 1 / epoch},
                "step": step,
                "accuracy": accuracy,
            }
            torch.save(checkpoint, temp)
            count = _count_tensors(checkpoint)
        else:
            kaggle_resume.save_checkpoint(
                temp,
                model=model,
                optimizer=optimizer,
                epoch=epoch,
                step=step,
                accuracy=accuracy,
                metrics={"loss": 1 / epoch},
                root=stage,
            )
            count = _count_tensors(torch.load(temp, weights_only=True, mmap=True))
        os.replace(temp, dst)
        files.append(
            {
                "path": relative,
                "epoch": epoch,
                "writer": writer,
                "bytes": dst.stat().st_size,
                "tensors": count,
            }
        )
    return {"files": files, "torch": torch.__version__}


def _work_load(path: str) -> dict[str, Any]:
    """A: torch.load(weights_only=True) of the whole checkpoint."""
    import torch

    return _measure(lambda: torch.load(path, weights_only=True), lambda c: len(c))


def _work_info(path: str, root: str) -> dict[str, Any]:
    """B: get_checkpoint_info of the same checkpoint."""
    import torch  # noqa: F401  (imported before the clock, as in _work_load)

    import kaggle_resume

    return _measure(
        lambda: kaggle_resume.get_checkpoint_info(path, root=root), _describe_info
    )


def _work_glob(root: str) -> dict[str, Any]:
    """A: glob("**/*.pth", recursive=True) over the root."""
    return _measure(
        lambda: glob.glob("**/*.pth", root_dir=root, recursive=True),
        lambda found: len(found),
    )


def _work_find(root: str) -> dict[str, Any]:
    """B: find_checkpoint_locations(root), the paths found by source."""
    import kaggle_resume

    def describe(found: dict[str, list[Path]]) -> dict[str, list[str]]:
        return {
            source: [os.path.relpath(path, root) for path in paths]
            for source, paths in found.items()
        }

    return _measure(lambda: kaggle_resume.find_checkpoint_locations(root), describe)


def _work_copy(src: str, root: str) -> dict[str, Any]:
    """B: copy_checkpoint_to_working of one checkpoint in an input."""
    import kaggle_resume

    return _measure(
        lambda: kaggle_resume.copy_checkpoint_to_working(src, root=root),
        lambda dst: {"dst": os.path.relpath(dst, root), "bytes": dst.stat().st_size},
    )


def _work_load_state(path: str, tensors: str, numel: str) -> dict[str, Any]:
    """A: the hand-written resume, torch.load of a known path + load_state_dict."""
    import torch

    model = _model(int(tensors), int(numel))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def load() -> Any:
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model_state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        return checkpoint

    return _measure(load, lambda checkpoint: {"start_epoch": checkpoint["epoch"] + 1})


def _work_resume(root: str, tensors: str, numel: str) -> dict[str, Any]:
    """B: resume(model, optimizer) over the whole tree."""
    import torch

    import kaggle_resume

    model = _model(int(tensors), int(numel))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def describe(state: Any) -> dict[str, Any]:
        return {
            "start_epoch": state.start_epoch,
            "resumed": state.resumed,
            "path": os.path.relpath(state.path, root) if state.path else None,
            "candidates": len(state.candidates),
        }

    return _measure(
        lambda: kaggle_resume.resume(model, optimizer, root=root, verbose=False),
        describe,
    )


def _read_records(path: str) -> None:
    """Read every record of a zip, which checks each CRC-32."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            with archive.open(member) as record:
                while record.read(1 << 20):
                    pass


def _work_resume_steps(root: str, tensors: str, numel: str) -> dict[str, Any]:
    """The steps of a resume, one after the other, each timed on its own."""
    import torch

    import kaggle_resume

    model = _model(int(tensors), int(numel))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds: dict[str, float] = {}

    def step(name: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = call()
        seconds[name] = time.perf_counter() - start
        return result

    path, _, _ = step(
        "scan: find_best_checkpoint_across_sources",
        lambda: kaggle_resume.find_best_checkpoint_across_sources(root=root),
    )
    step(
        "copy: copy_checkpoint_to_working",
        lambda: kaggle_resume.copy_checkpoint_to_working(path, root=root),
    )
    step("verify: read every zip record (CRC-32)", lambda: _read_records(path))
    checkpoint = step(
        "load: torch.load(weights_only=True, mmap=True)",
        lambda: torch.load(path, weights_only=True, mmap=True),
    )
    step(
        "apply: model + optimizer load_state_dict",
        lambda: (
            model.load_state_dict(checkpoint["model_state_dict"]),
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"]),
        ),
    )
    checkpoint = None  # let the mapped file go before the comparison
    step(
        "for comparison, not in resume: torch.load(weights_only=True)",
        lambda: torch.load(path, weights_only=True),
    )
    return {"steps": seconds}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "resume_steps": _work_resume_steps,
    "build": _work_build,
    "load": _work_load,
    "info": _work_info,
    "glob": _work_glob,
    "find": _work_find,
    "copy": _work_copy,
    "load_state": _work_load_state,
    "resume": _work_resume,
}


def run_worker(argv: Sequence[str]) -> int:
    """Run one worker and print its result as one JSON line on stdout."""
    name, *args = argv
    sys.path.insert(0, str(REPO))
    print(json.dumps(WORKERS[name](*args)))
    return 0


# --- Running pairs ---------------------------------------------------------


def _env(path: Path = REPO, *, bytecode: bool | None = None) -> dict[str, str]:
    """The environment of a measured process: path first on PYTHONPATH.

    bytecode True lets Python cache compiled modules, False forbids it, None
    keeps what this process was given.
    """
    env = dict(os.environ)
    paths = [str(path), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop(PROFILE_ENV, None)
    if bytecode is True:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    elif bytecode is False:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _spawn(name: str, *args: object, profile: bool = False) -> dict[str, Any]:
    """Run a worker in a fresh process and return what it measured."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    env = _env()
    if profile:
        env[PROFILE_ENV] = "1"
    start = time.perf_counter()
    done = subprocess.run(
        [*command, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"worker {name!r} failed with exit status {done.returncode}:\n"
            f"{done.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    if profile:
        result["profile"] = done.stderr
    return result


def _worker(name: str, *args: object) -> Callable[[], dict[str, Any]]:
    """A side of a pair: run this worker in a fresh process."""
    return lambda: _spawn(name, *args)


def _time_command(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run a command in a fresh process; its wall-clock seconds and output."""
    start = time.perf_counter()
    done = subprocess.run(
        command,
        check=True,
        env=env or _env(),
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    return {"seconds": time.perf_counter() - start, "stdout": done.stdout.strip()}


def _alternate(
    sides: dict[str, Callable[[], dict[str, Any]]],
    rounds: int,
    before: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the sides in turn (A B A B ...): a warm-up round, then rounds."""
    warmup: dict[str, Any] = {}
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for number in range(rounds + 1):
        for name, run in sides.items():
            if before is not None:
                before()
            result = run()
            if number == 0:
                warmup[name] = result
            else:
                measured[name].append(result)
    return {"warmup": warmup, "rounds": measured}


def _reset_working(root: Path) -> None:
    """Empty root/working and flush dirty pages, so each copy starts alike."""
    shutil.rmtree(root / "working", ignore_errors=True)
    (root / "working" / "checkpoints").mkdir(parents=True)
    os.sync()


# --- Checks and the table --------------------------------------------------


@dataclasses.dataclass
class Check:
    """One row of the table: a measured pair, its ratio and its verdict."""

    row: str
    what: str
    a: str
    b: str
    ratio: str
    goal: str
    passed: bool | None  # None: shown, not judged


def _values(results: list[dict[str, Any]], key: str) -> list[float]:
    return [float(result[key]) for result in results]


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float], unit: str) -> str:
    """A median and its range, e.g. '843 ms (801-902)'."""
    median = statistics.median(values)
    scale, shown = 1.0, unit
    if unit == "s" and median < 1:
        scale, shown = 1000.0, "ms"
    elif unit == "MB":
        scale = 1.0 / MB
    low, high = (_number(value * scale) for value in (min(values), max(values)))
    return f"{_number(median * scale)} {shown} ({low}-{high})"


def _speedup(
    row: str, what: str, a: list[float], b: list[float], at_least: float
) -> Check:
    """A check that B is at least at_least times faster than A (medians)."""
    ratio = statistics.median(a) / statistics.median(b)
    return Check(
        row,
        what,
        _cell(a, "s"),
        _cell(b, "s"),
        f"A/B {_number(ratio)}x",
        f">= {at_least:g}x",
        ratio >= at_least,
    )


def _fraction(
    row: str, what: str, a: list[float], b: list[float], at_most: float
) -> Check:
    """A check that B costs at most at_most of A (medians), e.g. time or RSS."""
    unit = "s" if what.endswith("time") else "MB"
    ratio = statistics.median(b) / statistics.median(a)
    return Check(
        row,
        what,
        _cell(a, unit),
        _cell(b, unit),
        f"B/A {ratio:.2f}",
        f"<= {at_most:g}",
        ratio <= at_most,
    )


def _verdict(passed: bool | None) -> str:
    return "info" if passed is None else "PASS" if passed else "FAIL"


def _table(checks: Sequence[Check]) -> str:
    """The checks as a Markdown table, columns aligned."""
    header = ("", "check", "A: baseline", "B: kaggle_resume", "ratio", "goal", "")
    rows = [header] + [
        (c.row, c.what, c.a, c.b, c.ratio, c.goal, _verdict(c.passed)) for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:])])


LEGEND = """\
A and B, each in a fresh process (imports before the clock, except 5):
  1 A torch.load(path, weights_only=True)  B get_checkpoint_info(path)
  2 A glob("**/*.pth", recursive=True)     B find_checkpoint_locations(root)
  3 A cp src dst                           B copy_checkpoint_to_working(src)
  4 A torch.load(path, weights_only=True) + model and optimizer
      load_state_dict                      B resume(model, optimizer)
  5 A python -c "import torch"             B python -c "import torch, kaggle_resume"
      judged on import kaggle_resume timed inside B, after import torch,
      with its bytecode cached and compiled from source (a fresh session)
Medians of the rounds, (min-max). A/B: how many times faster B is; B/A: B's
cost as a fraction of A's; read: rchar of /proc/self/io; RSS growth: peak
RSS during the call minus RSS before it; peak RSS: of the whole process."""


# --- Fixtures --------------------------------------------------------------


@dataclasses.dataclass
class Fixtures:
    """What the targets run on, built once per run in a temporary folder."""

    folder: Path
    sizes: Sizes
    resume_root: Path | None = None
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    discover_root: Path | None = None
    build_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def _build_checkpoints(fixtures: Fixtures) -> None:
    root = fixtures.folder / "resume"
    stage = fixtures.folder / "stage"
    stage.mkdir()
    (root / "working").mkdir(parents=True)
    start = time.perf_counter()
    built = _spawn("build", root, stage, fixtures.sizes.tensors, fixtures.sizes.numel)
    fixtures.build_seconds["checkpoints"] = time.perf_counter() - start
    fixtures.resume_root = root
    fixtures.files = {entry["path"]: entry for entry in built["files"]}


def _touch_files(folder: Path, count: int) -> None:
    """Create count empty data files, as fast as Python can."""
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    base = str(folder)
    for number in range(count):
        os.close(os.open(f"{base}/{number:06d}.png", flags, 0o644))


def _build_tree(fixtures: Fixtures) -> None:
    root = fixtures.folder / "discover"
    start = time.perf_counter()
    for relative in (*LAYOUTS, *DECOYS):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for relative, parts in DATASETS:
        count = fixtures.sizes.data_files
        for part in range(parts):
            folder = root / relative if parts == 1 else root / relative / f"{part:02d}"
            _touch_files(folder, count // parts + (part < count % parts))
    os.sync()
    fixtures.build_seconds["tree"] = time.perf_counter() - start
    fixtures.discover_root = root


def _needs(only: Sequence[str]) -> tuple[bool, bool]:
    """Whether the 1 GB checkpoints and the discovery tree are needed."""
    return bool({"inspect", "copy", "resume"} & set(only)), "discover" in only


# --- Targets ---------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one target measured: raw numbers, checks, notes and a profile."""

    raw: dict[str, Any]
    checks: list[Check]
    notes: list[str] = dataclasses.field(default_factory=list)
    profile: str | None = None


def _inspect_checks(
    row: str, what: str, goal: float, runs: dict[str, Any]
) -> list[Check]:
    a, b = runs["A"], runs["B"]
    size = runs["bytes"]
    read = statistics.median(_values(b, "rchar")) / size
    growth = statistics.median(_values(b, "rss_growth"))
    valid = all(result["result"]["is_valid"] for result in b)
    return [
        _speedup(
            row, f"{what}: time", _values(a, "seconds"), _values(b, "seconds"), goal
        ),
        Check(
            row,
            f"{what}: bytes read",
            _cell(_values(a, "rchar"), "MB"),
            _cell(_values(b, "rchar"), "MB"),
            f"B/size {read:.2%}",
            "< 2%",
            read < 0.02,
        ),
        Check(
            row,
            f"{what}: RSS growth",
            _cell(_values(a, "rss_growth"), "MB"),
            _cell(_values(b, "rss_growth"), "MB"),
            f"B {growth / MB:.1f} MB",
            "< 50 MB",
            growth < 50 * MB,
        ),
        Check(
            row, f"{what}: valid", "-", "yes" if valid else "NO", "-", "valid", valid
        ),
    ]


def bench_inspect(fixtures: Fixtures, rounds: int, profile: bool) -> Outcome:
    """Target 1: inspect a torch.save file and a save_checkpoint file."""
    assert fixtures.resume_root is not None
    root = fixtures.resume_root
    paths = {kind: root / relative for kind, relative in INSPECTED.items()}
    sides = {}
    for kind, path in paths.items():
        sides[f"A {kind}"] = _worker("load", path)
        sides[f"B {kind}"] = _worker("info", path, root)
    raw = _alternate(sides, rounds)

    checks = []
    labels = {
        "plain": ("1a", "inspect torch.save file", 10.0),
        "saved": ("1b", "inspect save_checkpoint file", 100.0),
    }
    for kind, (row, what, goal) in labels.items():
        runs = {
            "A": raw["rounds"][f"A {kind}"],
            "B": raw["rounds"][f"B {kind}"],
            "bytes": fixtures.files[INSPECTED[kind]]["bytes"],
        }
        checks += _inspect_checks(row, what, goal, runs)
    text = None
    if profile:
        text = "".join(
            _spawn("info", p, root, profile=True)["profile"] for p in paths.values()
        )
    return Outcome(raw, checks, profile=text)


def _found(result: dict[str, Any]) -> dict[str, str]:
    """Relative path -> source, from a find worker's result."""
    return {
        path: source for source, paths in result["result"].items() for path in paths
    }


def bench_discover(fixtures: Fixtures, rounds: int, profile: bool) -> Outcome:
    """Target 2: find_checkpoint_locations vs glob over a large tree."""
    assert fixtures.discover_root is not None
    root = fixtures.discover_root
    sides = {"A": _worker("glob", root), "B": _worker("find", root)}
    raw = _alternate(sides, rounds)
    a, b = raw["rounds"]["A"], raw["rounds"]["B"]

    notes = []
    exact = True
    for result in b:
        found = _found(result)
        if found != LAYOUTS:
            exact = False
            missing = sorted(set(LAYOUTS) - set(found))
            extra = sorted(set(found) - set(LAYOUTS))
            wrong = sorted(p for p in found if p in LAYOUTS and found[p] != LAYOUTS[p])
            notes.append(
                f"2: missing {missing}, unexpected {extra}, wrong source {wrong}"
            )
    counts = [len(_found(result)) for result in b]
    checks = [
        _speedup(
            "2", "discover: time", _values(a, "seconds"), _values(b, "seconds"), 50.0
        ),
        Check(
            "2",
            "discover: checkpoints found",
            f"{a[0]['result']} *.pth",
            f"{min(counts)}-{max(counts)} of {len(LAYOUTS)}",
            "-",
            "exactly the expected set",
            exact,
        ),
    ]
    text = _spawn("find", root, profile=True)["profile"] if profile else None
    return Outcome(raw, checks, notes=sorted(set(notes)), profile=text)


def bench_copy(fixtures: Fixtures, rounds: int, profile: bool) -> Outcome:
    """Target 3: copy_checkpoint_to_working vs cp of the same file."""
    assert fixtures.resume_root is not None
    root = fixtures.resume_root
    src = root / COPIED
    dst = root / "working" / "checkpoints" / src.name
    sides = {
        "A": lambda: _time_command(["cp", str(src), str(dst)]),
        "B": _worker("copy", src, root),
    }
    raw = _alternate(sides, rounds, before=lambda: _reset_working(root))
    a, b = raw["rounds"]["A"], raw["rounds"]["B"]

    size = fixtures.files[COPIED]["bytes"]
    copied = all(
        r["result"] == {"dst": os.path.relpath(dst, root), "bytes": size} for r in b
    )
    speed = statistics.median(_values(a, "seconds")) / statistics.median(
        _values(b, "seconds")
    )
    checks = [
        Check(
            "3",
            "copy: time",
            _cell(_values(a, "seconds"), "s"),
            _cell(_values(b, "seconds"), "s"),
            f"speed B/A {speed:.2f}",
            ">= 0.9",
            speed >= 0.9,
        ),
        Check(
            "3",
            "copy: same bytes in working",
            "-",
            "yes" if copied else "NO",
            "-",
            "copied",
            copied,
        ),
    ]
    text = None
    if profile:
        _reset_working(root)
        text = _spawn("copy", src, root, profile=True)["profile"]
    _reset_working(root)
    return Outcome(raw, checks, profile=text)


def bench_resume(fixtures: Fixtures, rounds: int, profile: bool) -> Outcome:
    """Target 4: resume() over four candidates vs a hand-written load."""
    assert fixtures.resume_root is not None
    root = fixtures.resume_root
    sizes = fixtures.sizes
    known = root / RESUMED[0]
    sides = {
        "A": _worker("load_state", known, sizes.tensors, sizes.numel),
        "B": _worker("resume", root, sizes.tensors, sizes.numel),
    }
    raw = _alternate(sides, rounds, before=lambda: _reset_working(root))
    a, b = raw["rounds"]["A"], raw["rounds"]["B"]

    expected = {
        "start_epoch": RESUMED[1] + 1,
        "resumed": True,
        "path": f"working/checkpoints/{Path(RESUMED[0]).name}",
        "candidates": len(CANDIDATES),
    }
    right = all(result["result"] == expected for result in b)
    notes = [] if right else [f"4: expected {expected}, got {b[0]['result']}"]
    checks = [
        _fraction(
            "4", "resume: time", _values(a, "seconds"), _values(b, "seconds"), 1.0
        ),
        _fraction(
            "4", "resume: peak RSS", _values(a, "peak_rss"), _values(b, "peak_rss"), 0.7
        ),
        Check(
            "4",
            "resume: epoch 41 from the copy",
            f"epoch {a[0]['result']['start_epoch']}",
            f"epoch {b[0]['result']['start_epoch']}",
            "-",
            "chose run-d",
            right,
        ),
    ]
    text = None
    if profile:
        _reset_working(root)
        args = (root, sizes.tensors, sizes.numel)
        text = _spawn("resume", *args, profile=True)["profile"]
        _reset_working(root)
        steps = _spawn("resume_steps", *args)["steps"]
        text += "The same steps run one after the other, each timed alone:\n"
        text += "".join(f"  {s:8.3f} s  {name}\n" for name, s in steps.items())
        total = sum(s for name, s in steps.items() if not name.startswith("for"))
        text += f"  {total:8.3f} s  in all, the comparison left out\n"
    _reset_working(root)
    return Outcome(raw, checks, notes=notes, profile=text)


# Each command prints how long its last import took inside the process, and
# B also where the module came from.
IMPORT_A = "import time; t = time.perf_counter(); import torch; "
IMPORT_A += "print(time.perf_counter() - t)"
IMPORT_B = "import torch, time; t = time.perf_counter(); import kaggle_resume; "
IMPORT_B += "print(time.perf_counter() - t, kaggle_resume.__file__)"


def _module_copy(folder: Path) -> Path:
    """A folder holding a copy of kaggle_resume.py alone, its bytecode cache ours."""
    folder.mkdir()
    shutil.copy2(REPO / "kaggle_resume.py", folder)
    return folder


def bench_import(fixtures: Fixtures, rounds: int, profile: bool) -> Outcome:
    """Target 5: what import kaggle_resume adds to import torch (twice the rounds).

    B runs twice: once with its bytecode cached (after the warm-up wrote it),
    once compiled from source as in a fresh Kaggle session, where no cache
    survives. Judged on import kaggle_resume timed inside B's process; the
    wall-clock difference of the processes is shown too, but it varies by
    more than 50 ms from one process to the next on a busy machine.
    """
    cached = _module_copy(fixtures.folder / "import-cached")
    source = _module_copy(fixtures.folder / "import-source")

    def side(code: str, env: dict[str, str]) -> Callable[[], dict[str, Any]]:
        command = [sys.executable, "-c", code]
        return lambda: _time_command(command, env, cwd=fixtures.folder)

    sides = {
        "A": side(IMPORT_A, _env()),
        "B cached": side(IMPORT_B, _env(cached, bytecode=True)),
        "B source": side(IMPORT_B, _env(source, bytecode=False)),
    }
    raw = _alternate(sides, 2 * rounds)
    runs = raw["rounds"]
    inside = {
        name: [float(r["stdout"].split()[0]) for r in runs[name]] for name in runs
    }
    wall = {name: _values(runs[name], "seconds") for name in runs}
    added = statistics.median(wall["B cached"]) - statistics.median(wall["A"])
    notes = []
    if not any((cached / "__pycache__").glob("kaggle_resume.*.pyc")):
        notes.append("5: no bytecode was cached; 'cached' compiled from source too")
    for name, folder in (("B cached", cached), ("B source", source)):
        files = {r["stdout"].split(maxsplit=1)[1] for r in runs[name]}
        if files != {str(folder / "kaggle_resume.py")}:
            notes.append(f"5: {name} imported {sorted(files)}, not its own copy")

    checks = [
        Check(
            "5",
            "import: process wall clock, cached",
            _cell(wall["A"], "s"),
            _cell(wall["B cached"], "s"),
            f"B-A {added * 1000:.0f} ms",
            "(shown only)",
            None,
        )
    ]
    for name, what in (("B cached", "bytecode cached"), ("B source", "from source")):
        alone = statistics.median(inside[name])
        checks.append(
            Check(
                "5",
                f"import: torch vs kaggle_resume, {what}",
                _cell(inside["A"], "s"),
                _cell(inside[name], "s"),
                f"B {alone * 1000:.1f} ms",
                "< 50 ms",
                alone < 0.050,
            )
        )
    return Outcome(raw, checks, notes=notes)


BENCHES: dict[str, Callable[[Fixtures, int, bool], Outcome]] = {
    "inspect": bench_inspect,
    "discover": bench_discover,
    "copy": bench_copy,
    "resume": bench_resume,
    "import": bench_import,
}


# --- Main ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where the numbers were taken: OS, CPU, cores, memory, torch."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    source = (REPO / "kaggle_resume.py").read_text()
    version = re.search(r'^__version__ = "([^"]+)"', source, re.MULTILINE)
    return {
        "kaggle_resume": version.group(1) if version else "unknown",
        "git": _git_state(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 1e9, 1),
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
    }


def _git_state() -> str:
    """The commit of the repo, and whether kaggle_resume.py differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "kaggle_resume.py"],
            check=False,
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + uncommitted changes" if changed else commit


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding path, from /proc/mounts."""
    best, kind = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            mount = fields[1]
            inside = str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 MB checkpoints, 10,000 files per dataset, 3 rounds",
    )
    parser.add_argument("--rounds", type=int, help="rounds after the warm-up")
    parser.add_argument(
        "--only", help=f"comma-separated targets, of: {','.join(TARGETS)}"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="where the raw numbers go"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after each target, profile one more B run and print it",
    )
    parser.add_argument(
        "--tmpdir", type=Path, help="build the fixtures here (default: $TMPDIR)"
    )
    return parser


def _targets(only: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if only is None:
        return list(TARGETS)
    chosen = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in TARGETS]
    if unknown or not chosen:
        parser.error(f"--only takes names of {', '.join(TARGETS)}, not {only!r}")
    return chosen


def _print_header(info: dict[str, Any], sizes: Sizes, folder: Path) -> None:
    print("kaggle_resume benchmark")
    print(f"  platform: {info['platform']}")
    print(f"  cpu: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB")
    print(f"  python {info['python']}, torch {info['torch']}")
    print(f"  kaggle_resume {info['kaggle_resume']}, git {info['git']}")
    load = ", ".join(f"{value:.2f}" for value in info["load_average"])
    print(f"  load average at start: {load}")
    if info["load_average"][0] > 0.5 * (info["cores"] or 1):
        print(
            "  NOTE: the machine is busy: other processes share its CPUs and "
            "disk, so\n  times vary more (A and B alternate, so both see it)"
        )
    print(f"  fixtures in {folder} ({_filesystem(folder)})")
    print(
        f"  model: {sizes.tensors} tensors of {sizes.numel:,} float32 + Adam; "
        f"{sizes.data_files:,} files per dataset; {sizes.rounds} rounds"
    )


def _build(fixtures: Fixtures, targets: Sequence[str]) -> None:
    checkpoints, tree = _needs(targets)
    if checkpoints:
        _build_checkpoints(fixtures)
        for entry in fixtures.files.values():
            print(
                f"  built {entry['path']}: {entry['bytes'] / MB:.0f} MB, "
                f"{entry['tensors']} tensors, epoch {entry['epoch']} "
                f"({entry['writer']})"
            )
    if tree:
        _build_tree(fixtures)
        total = fixtures.sizes.data_files * len(DATASETS)
        print(f"  built the discovery tree: {total:,} data files")
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in fixtures.build_seconds.items())
    print(f"  build time: {seconds}\n", flush=True)


def _report(outcomes: dict[str, Outcome]) -> bool:
    checks = [check for outcome in outcomes.values() for check in outcome.checks]
    print(_table(checks))
    print()
    print(LEGEND)
    for outcome in outcomes.values():
        for note in outcome.notes:
            print(f"NOTE {note}")
    for name, outcome in outcomes.items():
        if outcome.profile:
            print(f"\n--- profile of one B run of {name} ---\n{outcome.profile}")
    judged = [check for check in checks if check.passed is not None]
    failed = [f"{c.row} {c.what}" for c in judged if not c.passed]
    print(f"\n{len(judged) - len(failed)} of {len(judged)} checks pass", end="")
    print(f"; failing: {', '.join(failed)}" if failed else "")
    return not failed


def _write_json(
    path: Path, info: dict[str, Any], fixtures: Fixtures, outcomes: dict[str, Outcome]
) -> None:
    document = {
        "machine": info,
        "sizes": dataclasses.asdict(fixtures.sizes),
        "files": fixtures.files,
        "build_seconds": fixtures.build_seconds,
        "targets": {
            name: {
                **outcome.raw,
                "checks": [dataclasses.asdict(check) for check in outcome.checks],
                "notes": outcome.notes,
                "profile": outcome.profile,
            }
            for name, outcome in outcomes.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"raw numbers: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Build the fixtures, run every chosen target, print and save the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return run_worker(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    targets = _targets(args.only, parser)
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    info = machine()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(
        prefix="kaggle_resume_bench_", dir=args.tmpdir
    ) as temp:
        fixtures = Fixtures(folder=Path(temp), sizes=sizes)
        _print_header(info, sizes, fixtures.folder)
        _build(fixtures, targets)
        outcomes = {}
        for name in targets:
            print(f"running {name} ...", flush=True)
            outcomes[name] = BENCHES[name](fixtures, sizes.rounds, args.profile)
        print()
        passed = _report(outcomes)
        _write_json(args.json, info, fixtures, outcomes)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"total time: {time.perf_counter() - started:.0f} s; load average: {load}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
