"""Shared fixtures. Nothing here downloads: models and tokenizers are built locally (rlkd.models)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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
