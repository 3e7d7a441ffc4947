"""Corpora fetched from the Hugging Face hub for users who are online (cached by huggingface_hub)."""
from __future__ import annotations

from pathlib import Path

from lmforge.errors import DataError

TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "valid": "TinyStoriesV2-GPT4-valid.txt"}


def download_tinystories(split: str = "valid") -> Path:
    """The TinyStories V2 text file (stories separated by <|endoftext|> lines), downloaded once and cached."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(TINYSTORIES_REPO, TINYSTORIES_FILES[split], repo_type="dataset"))
    except Exception as e:
        raise DataError(f"could not download TinyStories from the Hugging Face hub ({e}); "
                        f"pass a local copy with --data PATH") from None
