"""ONNX export: onnxruntime reproduces PyTorch's logits (fp32 to 1e-4; fp16 within fp16 rounding, see below)."""
from __future__ import annotations

import json
from argparse import Namespace

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from _export_util import make_run  # noqa: E402
from lmforge.checkpoint import load_model  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.export import onnx as onnx_export  # noqa: E402

# fp16 tolerance. fp16 keeps 11 significant bits (unit roundoff u = 2^-11 ≈ 4.9e-4); every matmul output, residual
# add and the final logits are rounded to it, so the logits carry an error of a few u times their own magnitude even
# when each step is exact to rounding. We allow 4e-3 (= 8u) times the largest |logit|, and require the same argmax
# token wherever PyTorch's fp32 top-1 leads the runner-up by more than that tolerance.
FP16_REL = 4e-3


def run_onnx(path, ids: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input_ids", "logits")
    return torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, stories):
    """A GQA tiny model (random weights, saved through the real checkpoint code)."""
    from lmforge.tokenizer import train_bpe

    tok = train_bpe(stories[:100], 350, ["<|endoftext|>"])
    return make_run(tmp_path_factory.mktemp("onnx_run"), tok, ["model.init_std=0.08"])


@pytest.fixture(scope="module")
def sample(tiny_run, stories):
    lm = load_model(tiny_run)
    rows = [lm.tokenizer.encode(s)[:60] for s in stories[:3]]
    n = min(len(r) for r in rows)
    ids = torch.tensor([r[:n] for r in rows])
    with torch.no_grad():
        ref = lm.model(ids)
    return lm, ids, ref


def test_fp32_matches_pytorch(tmp_path, tiny_run, sample):
    lm, ids, ref = sample
    out = onnx_export.export(tiny_run, tmp_path / "onnx", Namespace(dtype="fp32"))
    got = run_onnx(out / "model.onnx", ids)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4
    # dynamic axes: another batch size and a single-token sequence run too
    one = run_onnx(out / "model.onnx", ids[:1, :1])
    assert (one - ref[:1, :1]).abs().max().item() < 1e-4
    info = json.loads((out / "export_info.json").read_text())
    assert info["verification"]["max_abs_diff_vs_torch"] < 1e-4
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_fp16_within_rounding(tmp_path, tiny_run, sample):
    lm, ids, ref = sample
    path = onnx_export.export(tiny_run, tmp_path / "model.onnx", Namespace(dtype="fp16"))
    got = run_onnx(path, ids)
    assert got.dtype == torch.float16
    tol = FP16_REL * ref.abs().max().item()
    diff = (got.float() - ref).abs().max().item()
    print(f"fp16 max |diff| {diff:.4g}, tolerance {tol:.4g}, max |logit| {ref.abs().max().item():.3g}")
    assert diff < tol
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * tol
    assert torch.equal(got.float().argmax(-1)[clear], ref.argmax(-1)[clear])


def test_rejects_bf16(tmp_path, tiny_run):
    with pytest.raises(LmforgeError, match="onnx"):
        onnx_export.export(tiny_run, tmp_path / "x.onnx", Namespace(dtype="bf16"))
