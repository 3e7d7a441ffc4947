"""benchmarks/mfu.py: the CPU smoke mode runs every seed preset's family at a tiny size and reports sane rows, and the
FLOP count follows the stated formula."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "rows.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mfu.py"), "--device", "cpu", "--tiny",
                        "--steps", "1", "--warmup", "1", "--presets", "llama-190m", "moe-1.4b", "no-such-preset",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "skipping no-such-preset" in p.stdout
    rows = {r["preset"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"llama-190m (tiny)", "moe-1.4b (tiny)"}
    for r in rows.values():
        assert r["tok_s"] > 0 and r["tflops"] > 0 and r["mfu"] is None and r["final_loss"] > 0
    # MoE: only experts_per_token of n_experts expert weights are active per token
    assert rows["moe-1.4b (tiny)"]["active"] < rows["moe-1.4b (tiny)"]["params"]


def test_flops_formula():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mfu import flops_per_token

    from lmforge.config import load_config
    from lmforge.model import build_model

    cfg = load_config("tiny", ["model.vocab_size=512"])
    model = build_model(cfg.model)
    total, active, fpt = flops_per_token(model, cfg, 128)
    m = cfg.model
    assert total == sum(p.numel() for p in model.parameters())
    assert active == total  # tied: the embedding table is skipped as a lookup but counted once as the lm_head matmul
    assert fpt == 6 * active + 12 * m.n_layers * m.n_heads * m.dim_head * 128
