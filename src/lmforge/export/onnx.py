"""`lmforge export RUN --format onnx --out DIR [--dtype fp32|fp16]`: an ONNX graph that onnxruntime runs.

The graph computes full-sequence logits with no KV cache:
    input   input_ids  int64   [batch, sequence]        (1 <= sequence <= model.max_seq_len)
    output  logits     float   [batch, sequence, vocab] (fp32 or fp16, as --dtype)
Generating with it means re-running the whole prefix for every new token (simple, O(n²)); lmforge's own Engine and the
Hugging Face export keep a KV cache. Exported with the dynamo exporter (`torch.onnx.export(dynamo=True)`, which needs
`onnxscript`), because the TorchScript exporter has no RMSNorm. After writing, the file is run in onnxruntime on a
sample batch and compared with PyTorch; the difference is stored in export_info.json.

--out DIR writes DIR/model.onnx (+ model.onnx.data for models over 1.5 GB), DIR/tokenizer/ and DIR/export_info.json;
--out FILE.onnx writes that one file."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.export.common import add_dtype_argument, export_dtype
from lmforge.utils.io import atomic_dir, atomic_path

INPUTS = "input_ids int64 [batch, sequence] -> logits [batch, sequence, vocab]; no KV-cache inputs or outputs"
EXTERNAL_DATA_BYTES = 1_500_000_000  # ONNX protobufs stop at 2 GB; larger weights go to a side file


class _Logits(torch.nn.Module):
    """The model as ONNX sees it: token ids in, logits out (no cache, no loss)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dtype_argument(parser)


def export_onnx(model: torch.nn.Module, path: Path, dtype: torch.dtype) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's op library)
    except ImportError:
        raise LmforgeError("ONNX export needs the onnxscript package: pip install 'lmforge[onnx]'") from None
    model = model.to(dtype).eval()
    seq = min(8, model.cfg.max_seq_len)
    example = torch.zeros(2, seq, dtype=torch.long)
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1,
                                                                                  max=model.cfg.max_seq_len)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter logs a line for every optional op library it cannot find
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Logits(model), (example,), dynamo=True, input_names=["input_ids"],
                                        output_names=["logits"], dynamic_shapes=({0: batch, 1: length},),
                                        optimize=True, verbose=False)
            program.save(str(path), external_data=big)
    except Exception as e:  # the exporter raises many types; say what we tried and what it needs
        raise LmforgeError(
            f"torch.onnx.export could not trace this model ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            f"The ONNX export computes full-sequence logits ({INPUTS}); layers with data-dependent shapes (such as "
            "MoE token dispatch) cannot be exported this way.") from None
    finally:
        onnx_log.setLevel(level)


def verify(model: torch.nn.Module, path: Path, vocab: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Run the ONNX file in onnxruntime on a random batch and compare its logits with PyTorch's (same dtype)."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, min(16, model.cfg.max_seq_len)), generator=g)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
    with torch.no_grad():
        ref = model.to(dtype)(ids)
    return {"onnxruntime": ort.__version__, "max_abs_diff_vs_torch": float((got.float() - ref.float()).abs().max()),
            "sample_shape": list(ids.shape)}


def export(run: str | Path, out: str | Path, args: argparse.Namespace | None = None) -> Path:
    from lmforge.checkpoint import load_model
    from lmforge.checkpoint.loading import find_tokenizer

    dtype = export_dtype(args, ("fp32", "fp16"), "onnx")
    lm = load_model(run)
    out = Path(out)
    info = {"format": "onnx", "inputs": INPUTS, "dtype": str(dtype).removeprefix("torch."),
            "vocab_size": lm.config.model.vocab_size, "max_seq_len": lm.config.model.max_seq_len,
            "eos_id": lm.tokenizer.eos_id, "checkpoint": str(lm.checkpoint)}
    if out.suffix == ".onnx":
        with atomic_path(out) as tmp:
            export_onnx(lm.model, tmp, dtype)
            if tmp.with_name(tmp.name + ".data").exists():
                raise LmforgeError("this model is too large for one .onnx file; pass a directory as --out")
            info["verification"] = verify(lm.model, tmp, lm.config.model.vocab_size, dtype)
        return out
    with atomic_dir(out) as tmp:
        export_onnx(lm.model, tmp / "model.onnx", dtype)
        info["verification"] = verify(lm.model, tmp / "model.onnx", lm.config.model.vocab_size, dtype)
        shutil.copytree(find_tokenizer(lm.checkpoint, lm.run_dir), tmp / "tokenizer")
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"onnxruntime check: max |logits difference| vs PyTorch {info['verification']['max_abs_diff_vs_torch']:.3g}")
    return out
