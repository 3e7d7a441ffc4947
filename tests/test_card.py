"""The model card is written from the run's own numbers: the exact parameter count, the final eval metrics in
metrics.jsonl, and a real (non-blank) training-curve PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.checkpoint import load_model
from lmforge.cli import main
from lmforge.metrics import read_metrics
from lmforge.model import count_parameters


@pytest.fixture(scope="module")
def card(tiny_run, tmp_path_factory):
    (tiny_run / "smoke.json").write_text(json.dumps({
        "summary": {"OK": 1, "WEAK": 1, "FAIL": 0}, "sampling": {"temperatures": [0.8], "top_k": 40,
                                                                "max_new_tokens": 20, "seed": 0},
        "results": [{"id": "story", "temperature": 0.8, "output": "a | b", "verdict": "OK", "reasons": []},
                    {"id": "repeat", "temperature": 0.8, "output": "x x x", "verdict": "WEAK",
                     "reasons": ["repetitive"]}]}))
    out = tmp_path_factory.mktemp("card") / "README.md"
    assert main(["card", str(tiny_run), "--out", str(out), "--max-new-tokens", "12", "--prompt", "Once upon a time",
                 "--prompt", "The cat"]) == 0
    (tiny_run / "smoke.json").unlink()
    return out


def test_card_has_exact_parameter_count(card, tiny_run):
    text = card.read_text()
    n = count_parameters(load_model(tiny_run).model)  # counted on the real model, not the meta one the card uses
    assert f"**{n:,}**" in text
    assert f"({n:,} exactly)" in text


def test_card_has_final_eval_numbers_from_metrics(card, tiny_run):
    text = card.read_text()
    rows = [r for r in read_metrics(tiny_run / "metrics.jsonl") if "val_loss" in r]
    assert rows, "the tiny run logs a final evaluation"
    last = rows[-1]
    assert (f"Final eval loss: {last['val_loss']:.4f} | Final eval perplexity: {last['val_perplexity']:.3f} | "
            f"Final eval bpb: {last['val_bpb']:.4f}") in text
    assert f"| {last['step']:,} | {last['tokens']:,} |" in text  # the curve table row for that step


def test_card_sections_and_samples(card, tiny_run):
    text = card.read_text()
    for heading in ("## Model details", "### Architecture", "## Training configuration", "## Data",
                    "## Training curves", "## Evaluation", "## Smoke test", "## Sample outputs", "## Limitations"):
        assert heading in text
    assert "**1 OK** / **1 WEAK** / **0 FAIL**" in text
    assert "a \\| b" in text  # table cells are escaped
    assert "> **Once upon a time**" in text and "> **The cat**" in text
    meta = json.loads((tiny_run / "data" / "meta.json").read_text())
    assert f"{meta['splits']['train']['tokens']:,} tokens" in text


def test_card_png_is_a_real_plot(card):
    import matplotlib.image as mpimg

    png = card.parent / "loss_curve.png"
    assert "![training curve](loss_curve.png)" in card.read_text()
    assert png.stat().st_size > 10_000
    img = mpimg.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 400
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # lines, text and antialiasing: not a blank canvas
