"""`lmforge card RUN`: a README.md model card in the style of the seed cards, written only from the run's own files:
config.toml (architecture, training settings), the exact parameter count (model/params.py, on the meta device), the
dataset's meta.json, metrics.jsonl (curve table, final eval loss / perplexity / bpb), the loss-curve PNG
(metrics/plots.py), smoke.json when `lmforge smoke` wrote one, and a few seeded samples generated with the Engine."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.utils.io import atomic_write_text

DEFAULT_PROMPTS = ("Once upon a time", "The little dog", "One day, Lily")
MAX_CURVE_ROWS = 12


@dataclass
class SampleSettings:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 60
    temperature: float = 0.8
    top_k: int = 40
    seed: int = 0


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _table(rows: list[tuple[Any, Any]], head: tuple[str, str] = ("setting", "value")) -> str:
    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell or quote."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def final_eval(rows: list[dict]) -> dict | None:
    evals = [r for r in rows if "val_loss" in r]
    return evals[-1] if evals else None


def curve_table(rows: list[dict]) -> str:
    """Eval rows by step (with the train loss logged at or just before that step); only train rows if never evaluated."""
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    if evals:
        if len(evals) > MAX_CURVE_ROWS:  # keep the first, the last and evenly spaced ones between
            idx = sorted({round(i * (len(evals) - 1) / (MAX_CURVE_ROWS - 1)) for i in range(MAX_CURVE_ROWS)})
            evals = [evals[i] for i in idx]
        lines = ["| step | tokens | train loss | eval loss | eval perplexity | eval bpb |", "|---:|---:|---:|---:|---:|---:|"]
        for e in evals:
            before = [t for t in train if t["step"] <= e["step"]]
            tl = f"{before[-1]['loss']:.4f}" if before else "–"
            ppl = e.get("val_perplexity")
            bpb = e.get("val_bpb")
            lines.append(f"| {e['step']:,} | {e.get('tokens', 0):,} | {tl} | {e['val_loss']:.4f} | "
                         f"{'–' if ppl is None else f'{ppl:.3f}'} | {'–' if bpb is None else f'{bpb:.4f}'} |")
        return "\n".join(lines)
    if not train:
        return "_No metrics were logged._"
    if len(train) > MAX_CURVE_ROWS:
        idx = sorted({round(i * (len(train) - 1) / (MAX_CURVE_ROWS - 1)) for i in range(MAX_CURVE_ROWS)})
        train = [train[i] for i in idx]
    lines = ["| step | tokens | train loss | lr |", "|---:|---:|---:|---:|"]
    lines += [f"| {t['step']:,} | {t.get('tokens', 0):,} | {t['loss']:.4f} | {t.get('lr', 0):.2e} |" for t in train]
    return "\n".join(lines)


def training_table(cfg: Config, state: dict) -> str:
    t = cfg.train
    seq = t.seq_len or cfg.model.max_seq_len
    micro = t.batch_size * seq
    accum = max(1, t.tokens_per_step // micro) if t.tokens_per_step else 1
    rows = [
        ("optimizer", f"AdamW (β1 {t.beta1:g}, β2 {t.beta2:g}, eps {t.eps:g}, weight decay {t.weight_decay:g})"),
        ("learning rate", f"{t.lr:g} peak → {t.min_lr:g} ({t.schedule}, {t.warmup_steps:,} warmup steps)"),
        ("steps", f"{state.get('step', t.max_steps):,} (configured max {t.max_steps:,})"),
        ("batch", f"{t.batch_size} sequences × {seq} tokens × {accum} accumulation = {micro * accum:,} tokens/step"),
        ("tokens seen", f"{state['tokens']:,}" if "tokens" in state else "–"),
        ("gradient clipping", f"{t.grad_clip:g}" if t.grad_clip > 0 else "off"),
        ("precision", t.dtype),
        ("seed", t.seed),
    ]
    if "elapsed" in state:
        rows.append(("training time", f"{state['elapsed'] / 60:.1f} min (steps only, excluding evaluation)"))
    sft = getattr(cfg, "sft", None)
    if sft is not None and getattr(sft, "init_from", ""):
        rows.append(("fine-tuned from", f"`{sft.init_from}`"))
        rows.append(("prompt style", getattr(sft, "prompt_style", "") or "–"))
    return _table(rows)


def data_section(cfg: Config, run_dir: Path) -> str:
    dataset = Path(cfg.data.dataset) if cfg.data.dataset else run_dir / "data"
    meta_path = dataset / "meta.json"
    lines = []
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        rows = [("sources", ", ".join(f"`{s}`" for s in meta.get("sources", [])) or "–")]
        for split, info in meta.get("splits", {}).items():
            rows.append((f"{split} split", f"{info.get('docs', 0):,} documents, {info.get('tokens', 0):,} tokens, "
                                           f"{info.get('bytes', 0):,} bytes"))
        rows.append(("validation fraction", f"{meta.get('val_fraction', 0):g} (every n-th document held out)"))
        tok = meta.get("tokenizer", {})
        rows.append(("tokenized with", f"vocab {tok.get('vocab_size', 0):,}, fingerprint `{tok.get('fingerprint', '')}`"))
        lines.append(_table(rows))
    else:
        sources = ", ".join(f"`{s}`" for s in cfg.data.sources) or "–"
        lines.append(f"Sources: {sources} (the prepared dataset's meta.json was not found at `{meta_path}`).")
    return "\n".join(lines)


def smoke_section(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        smoke = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: not valid JSON ({e})") from None
    summary = smoke.get("summary") or {}
    out = []
    if summary:
        out.append("Verdicts: " + " / ".join(f"**{n} {v}**" for v, n in summary.items()) + ".")
    samp = smoke.get("sampling") or {}
    if samp:
        out.append(f"Sampling: temperatures {samp.get('temperatures')}, top-k {samp.get('top_k')}, "
                   f"{samp.get('max_new_tokens')} new tokens, seed {samp.get('seed')}.")
    results = smoke.get("results") or []
    if results:
        out += ["", "| prompt | temp | verdict | output | why |", "|---|---:|---|---|---|"]
        for r in results:
            text = _md(str(r.get("output", "")))
            text = text if len(text) <= 80 else text[:77] + "..."
            out.append(f"| {_md(str(r.get('id', r.get('prompt', ''))))} | {r.get('temperature', '')} | "
                       f"{r.get('verdict', '')} | {text} | {_md('; '.join(r.get('reasons', [])))} |")
    return "\n".join(out) if out else None


def sample_section(lm, settings: SampleSettings) -> str:
    from lmforge.inference import Engine, SamplingParams

    engine = Engine(lm.model, lm.tokenizer)
    style_name = getattr(getattr(lm.config, "sft", None), "prompt_style", "") or ""
    lines = [f"Sampled by `lmforge card` with temperature {settings.temperature:g}, top-k {settings.top_k}, "
             f"{settings.max_new_tokens} new tokens at most, seed {settings.seed} + the prompt's index"
             + (f", prompts in the `{style_name}` prompt style" if style_name else "") + ":", ""]
    for i, prompt in enumerate(settings.prompts):
        params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_k=settings.top_k, seed=settings.seed + i)
        text = prompt
        if style_name:
            from lmforge.data.templates import get_prompt_style

            style = get_prompt_style(style_name)
            text = style.prompt([{"role": "user", "content": prompt}])
            params.stop = list(style.stop)
        ids = lm.tokenizer.encode(text)
        if len(ids) + 1 >= engine.context:
            continue
        params.max_new_tokens = min(params.max_new_tokens, engine.context - len(ids) - 1)
        out = engine.complete(ids, params)
        body = (f"**{prompt}**{out.text}" if not style_name else f"**{prompt}**\n>\n> {out.text}").replace("\n", "\n> ")
        lines += [f"> {body}", ""]
    return "\n".join(lines).rstrip()


def limitations(cfg: Config, rows: list[dict], meta_tokens: int | None, seen: int | None) -> str:
    items = [f"Context window of {cfg.model.max_seq_len:,} tokens; longer inputs must be truncated."]
    if meta_tokens is not None:
        items.append(f"Its training split holds {meta_tokens:,} tokens" + (f" (it saw {seen:,} tokens)" if seen else "")
                     + "; what it knows is limited to that text.")
    items.append("Not safety-aligned (no RLHF / preference tuning); outputs can be wrong, repetitive or inappropriate.")
    if not getattr(getattr(cfg, "sft", None), "init_from", ""):
        items.append("A base (pretrained) model: it continues text and does not follow instructions or chat.")
    ev = final_eval(rows)
    if ev is None:
        items.append("No held-out evaluation was logged for this run.")
    return "\n".join(f"- {i}" for i in items)


def write_card(run: str | Path, out: str | Path | None = None, settings: SampleSettings | None = None,
               samples: bool = True) -> Path:
    from lmforge.checkpoint import load_model
    from lmforge.metrics import plot_loss_curve, read_metrics
    from lmforge.model import architecture_table
    from lmforge.model.params import count_parameters, meta_model

    lm = load_model(run)
    cfg, run_dir = lm.config, lm.run_dir
    out = Path(out) if out else run_dir / "README.md"
    rows = read_metrics(run_dir / "metrics.jsonl")
    state_path = lm.checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    n_params = count_parameters(meta_model(cfg.model))
    png = out.parent / "loss_curve.png"
    has_plot = plot_loss_curve(run_dir / "metrics.jsonl", png, title=cfg.name) if rows else False
    dataset = Path(cfg.data.dataset) if cfg.data.dataset else run_dir / "data"
    meta = json.loads((dataset / "meta.json").read_text()) if (dataset / "meta.json").is_file() else None
    train_tokens = meta["splits"]["train"]["tokens"] if meta and "train" in meta.get("splits", {}) else None
    m = cfg.model
    family = ("sparse MoE" if getattr(m, "n_experts", 0) else "Llama-style" if m.mlp == "swiglu" and m.norm == "rmsnorm"
              else "GPT-style") + (" (ternary BitLinear)" if getattr(m, "quant", "none") not in ("none", "") else "")
    attn = "MHA" if m.kv_heads == m.n_heads else "MQA" if m.kv_heads == 1 else "GQA"
    ev = final_eval(rows)
    tok = lm.tokenizer
    parts = [
        "---", "library_name: lmforge", "pipeline_tag: text-generation", "tags:", "- lmforge", "- text-generation",
        "---", "",
        f"# {cfg.name}", "",
        f"A {_human(n_params)}-parameter ({n_params:,} exactly) {family} decoder-only Transformer ({attn}) trained "
        f"from scratch with lmforge" + (f" for {state['step']:,} steps" if "step" in state else "") + ".", "",
        "## Model details", "",
        _table([("total parameters", f"**{n_params:,}**"), ("architecture", f"{family} decoder-only Transformer, {attn}"),
                ("tokenizer", f"{cfg.tokenizer.kind} ({tok.kind}), {tok.vocab_size:,} tokens; end of text "
                              f"`{tok.eos_token}` (id {tok.eos_id})"),
                ("special tokens", ", ".join(f"`{t}`" for t in tok.special_tokens) or "–"),
                ("checkpoint", f"`{lm.checkpoint.relative_to(run_dir) if lm.checkpoint.is_relative_to(run_dir) else lm.checkpoint}`")]),
        "", "### Architecture", "", architecture_table(m), "",
        "## Training configuration", "", training_table(cfg, state), "",
        "## Data", "", data_section(cfg, run_dir), "",
        "## Training curves", "", curve_table(rows), "",
    ]
    if has_plot:
        parts += [f"![training curve]({png.name})", ""]
    parts += ["## Evaluation", ""]
    if ev:
        ppl, bpb = ev.get("val_perplexity"), ev.get("val_bpb")
        parts += [f"Held-out validation split at step {ev['step']:,} ({ev.get('val_tokens', 0):,} tokens, "
                  f"tokenizer: {cfg.tokenizer.kind} {tok.vocab_size:,}):", "",
                  _table([("eval loss", f"{ev['val_loss']:.4f} nats/token"),
                          ("eval perplexity", "–" if ppl is None else f"{ppl:.3f}"),
                          ("eval bits per byte", "–" if bpb is None else f"{bpb:.4f}")], ("metric", "value")), "",
                  f"Final eval loss: {ev['val_loss']:.4f} | Final eval perplexity: "
                  f"{'–' if ppl is None else f'{ppl:.3f}'} | Final eval bpb: {'–' if bpb is None else f'{bpb:.4f}'}", ""]
    else:
        parts += ["_No evaluation was logged._", ""]
    smoke = smoke_section(run_dir / "smoke.json")
    if smoke:
        parts += ["## Smoke test", "", smoke, ""]
    if samples:
        parts += ["## Sample outputs", "", sample_section(lm, settings or SampleSettings()), ""]
    parts += ["## Usage", "", "```bash", f"lmforge generate {run_dir} --prompt \"{(settings or SampleSettings()).prompts[0]}\"",
              f"lmforge eval {run_dir}", "lmforge export RUN --format hf --out hf-model   # transformers "
              "AutoModelForCausalLM (Llama-architecture runs)", "```", "",
              "## Limitations", "", limitations(cfg, rows, train_tokens, state.get("tokens")), ""]
    atomic_write_text(out, "\n".join(parts))
    return out
