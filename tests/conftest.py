"""Shared fixtures: the read-only data under ../shared/data and one tiny trained run reused by many tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LMFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINYSTORIES = SHARED / "tinystories" / "tinystories-valid.txt"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set LMFORGE_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def stories(shared_data) -> list[str]:
    """The first 400 TinyStories stories (a small, fast slice)."""
    from lmforge.data import iter_documents

    docs = []
    for d in iter_documents(str(TINYSTORIES)):
        docs.append(d)
        if len(docs) == 400:
            break
    return docs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_data) -> Path:
    """A tiny dense model trained for 30 steps on a TinyStories slice: a real run directory to load, sample,
    evaluate and export. Built once per test session (~5 s)."""
    from lmforge.config import load_config
    from lmforge.train import pretrain

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny", [f'out_dir="{out}"', f'data.sources=["{TINYSTORIES}"]', "data.max_docs=600",
                               "train.max_steps=30", "train.eval_every=0", "train.checkpoint_every=0"])
    pretrain(cfg, progress=False)
    return out
