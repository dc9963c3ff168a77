"""Sessions for kaggle_resume: tests, lint, typecheck, demo, bench.

``python -m nox -l`` lists them; ``python -m nox -s tests`` runs the tests.
"""

from __future__ import annotations

import nox

# The CPU build of torch; an unpinned torch may pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"
# The other tools whose checkpoints the tests make for real; tests only.
TOOLS = ("pytorch-lightning==2.6.6", "transformers==5.25.0", "accelerate==1.16.0")
TEST_DEPS = (TORCH, "numpy", "pytest", *TOOLS)

nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    session.install(*TEST_DEPS)
    env = {"KAGGLE_RESUME_REQUIRE_EXTRAS": "1"}  # a missing tool fails, never skips
    session.run("pytest", "-q", "test_kaggle_resume.py", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff")
    files = ["kaggle_resume.py", "test_kaggle_resume.py", "noxfile.py", "benchmarks"]
    rules = ["--select", "E,F,W,I,B,UP", "--line-length", "88"]
    session.run("ruff", "check", *rules, *files, *session.posargs)
    session.run("ruff", "format", "--check", "--line-length", "88", *files)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the module with mypy."""
    session.install(TORCH, "numpy", "mypy")
    session.run("mypy", "--strict", "kaggle_resume.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run three simulated Kaggle sessions that resume each other."""
    session.install(TORCH)
    session.run("python", "kaggle_resume.py", "demo", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark against torch.load, glob and cp (slow; not run by default)."""
    session.install(TORCH, "numpy")
    session.run("python", "benchmarks/bench.py", *session.posargs)
