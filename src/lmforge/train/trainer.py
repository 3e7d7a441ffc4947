"""The training loop, shared by pretraining and fine-tuning: gradient accumulation, clipping, mixed precision,
periodic evaluation, atomic checkpoints with exact resume, a progress bar, JSONL metrics and a loss-curve PNG.

What to train on and how to evaluate are passed in (a loader with next_batch/state_dict/load_state_dict and an eval
function), so pretraining and SFT share this one loop."""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm import tqdm

from lmforge.checkpoint import latest_checkpoint, load_trainer_state, load_weights, save_checkpoint
from lmforge.config import Config
from lmforge.metrics import MetricsLogger, plot_loss_curve
from lmforge.train.optim import build_optimizer
from lmforge.train.schedule import learning_rate
from lmforge.utils.device import autocast


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


EvalFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class TrainResult:
    step: int
    tokens: int
    interrupted: bool = False
    stopped_early: bool = False
    final_eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


class _Interrupt:
    """First Ctrl-C: finish the step, save a checkpoint, exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)", flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        loader: BatchSource,
        eval_fn: EvalFn | None,
        device: torch.device,
        dtype: torch.dtype,
        progress: bool = True,
        early_stopping_patience: int = 0,
    ) -> None:
        self.cfg, self.model, self.loader, self.eval_fn = cfg, model, loader, eval_fn
        self.device, self.dtype, self.progress = device, dtype, progress
        self.patience = early_stopping_patience
        self.run_dir = cfg.run_dir
        t = cfg.train
        self.seq_len = t.seq_len or cfg.model.max_seq_len
        micro_tokens = t.batch_size * self.seq_len * self.world_size
        self.grad_accum = max(1, t.tokens_per_step // micro_tokens) if t.tokens_per_step else 1
        self.tokens_per_step = micro_tokens * self.grad_accum
        self.optimizer = build_optimizer(model, t, device)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" else None
        self.forward = torch.compile(model) if t.compile else model
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.best_eval = math.inf
        self.bad_evals = 0

    world_size = 1  # data-parallel wrappers override this
    eval_at_start = False  # evaluate once before the first step (set by fine-tuning)
    is_main = True  # the process that logs, plots and writes checkpoint files (rank 0)

    # -- state --------------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "loader": self.loader.state_dict(),
            "best_eval": self.best_eval if math.isfinite(self.best_eval) else None,
            "bad_evals": self.bad_evals,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def resume(self, ckpt: Path | None = None) -> bool:
        ckpt = ckpt or latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = self.load_checkpoint_state(ckpt)
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.loader.load_state_dict(state["loader"])
        self.best_eval = state.get("best_eval") or math.inf
        self.bad_evals = state.get("bad_evals", 0)
        if self.scaler and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        print(f"resumed from {ckpt} at step {self.step}", flush=True)
        return True

    def load_checkpoint_state(self, ckpt: Path) -> dict[str, Any]:
        """Weights and optimizer into place; returns the trainer state (data-parallel wrappers override this)."""
        load_weights(self.model, ckpt / "model.safetensors")
        return load_trainer_state(ckpt, self.optimizer)

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.cfg, self.model, self.optimizer, self.state(),
                               keep=self.cfg.train.keep_checkpoints)

    # -- one optimizer step -------------------------------------------------------------------------------------------
    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for i in range(self.grad_accum):
            x, y = self.loader.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.sync_context(last=i == self.grad_accum - 1):
                with autocast(self.device, self.dtype):
                    loss = self.forward(x, y)
                scaled = loss / self.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / self.grad_accum, grad_norm

    def extra_metrics(self) -> dict[str, Any]:
        """Model-specific values to log (MoE: router losses, expert load), from the model's optional
        `extra_metrics()`; a dense Transformer returns {} at once."""
        fn = getattr(getattr(self.model, "module", self.model), "extra_metrics", None)  # unwrap DDP-style wrappers
        return fn() if callable(fn) else {}

    # -- hooks for data-parallel subclasses (train/distributed.py); single-process defaults ---------------------------
    def sync_context(self, last: bool):
        """Around each micro-batch: DDP/FSDP skip the gradient all-reduce on all but the last."""
        return contextlib.nullcontext()

    def agree(self, flag: bool) -> bool:
        """A stop decision every process takes together (data-parallel: true if true on any rank)."""
        return flag

    def open_logger(self, resume_step: int | None) -> MetricsLogger:
        return MetricsLogger(self.run_dir / "metrics.jsonl", resume_step=resume_step)

    def progress_fraction(self) -> float:
        t = self.cfg.train
        frac = self.step / t.max_steps
        if t.time_limit_min > 0:
            frac = max(frac, self.elapsed / (60 * t.time_limit_min))
        return min(frac, 1.0)

    # -- evaluation ---------------------------------------------------------------------------------------------------
    def evaluate(self, logger: MetricsLogger) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        result = self.eval_fn(self.model)
        logger.log({"step": self.step, "tokens": self.tokens, **{f"val_{k}": v for k, v in result.items()}})
        if self.is_main:
            plot_loss_curve(logger.path, self.run_dir / "loss_curve.png", title=self.cfg.name)
        if result["loss"] < self.best_eval - 1e-6:
            self.best_eval, self.bad_evals = result["loss"], 0
        else:
            self.bad_evals += 1
        return result

    # -- the loop -----------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        t = self.cfg.train
        resumed = self.resume() if resume else False
        logger = self.open_logger(self.step if resumed else None)
        result = TrainResult(step=self.step, tokens=self.tokens)
        limit_s = 60 * t.time_limit_min
        if limit_s > 0:  # a time-boxed run: the bar and its ETA follow training time, not the step cap
            bar = tqdm(total=limit_s, initial=min(self.elapsed, limit_s), unit="s", disable=not self.progress,
                       dynamic_ncols=True, desc=self.cfg.name,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")
        else:
            bar = tqdm(total=t.max_steps, initial=self.step, unit="step", disable=not self.progress,
                       dynamic_ncols=True, desc=self.cfg.name)
        last_log_time, last_log_tokens = time.time(), self.tokens
        last_eval: dict[str, float] = {}
        evaluated_at = -1
        if self.eval_at_start and not resumed and self.eval_fn is not None:
            self.evaluate(logger)  # step 0: the starting point (for fine-tuning, the base model's held-out loss)
        with _Interrupt() as interrupt:
            while self.step < t.max_steps:
                if t.time_limit_min > 0 and self.agree(self.elapsed >= 60 * t.time_limit_min):
                    break
                step_start = time.time()
                lr = learning_rate(t, self.step, self.progress_fraction())
                loss, grad_norm = self.train_step(lr)
                self.step += 1
                self.tokens += self.tokens_per_step
                step_time = time.time() - step_start
                self.elapsed += step_time
                bar.update(min(step_time, max(limit_s - bar.n, 0)) if limit_s > 0 else 1)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    now = time.time()
                    tok_s = (self.tokens - last_log_tokens) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_tokens = now, self.tokens
                    record = {"step": self.step, "tokens": self.tokens, "loss": loss.item(), "lr": lr,
                              "grad_norm": grad_norm.item(), "tok_per_s": round(tok_s, 1),
                              "elapsed_s": round(self.elapsed, 2)}
                    extra = self.extra_metrics()
                    record.update(extra)
                    if callable(getattr(self.loader, "metrics", None)):  # e.g. tokens drawn per mixture source
                        record.update(self.loader.metrics())
                    logger.log(record)
                    postfix = {"loss": f"{record['loss']:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
                    postfix.update((k, f"{v:.3g}") for k, v in extra.items() if isinstance(v, float))
                    if limit_s > 0:
                        postfix["step"] = str(self.step)
                    bar.set_postfix(postfix, refresh=False)
                if t.eval_every and self.step % t.eval_every == 0 and self.step < t.max_steps:
                    last_eval, evaluated_at = self.evaluate(logger), self.step
                    bar.write(f"step {self.step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in last_eval.items()
                                                               if k in ("loss", "bpb")))
                    if self.patience and self.bad_evals >= self.patience:
                        result.stopped_early = True
                        bar.write(f"early stopping: no improvement in {self.bad_evals} evaluations")
                        break
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.max_steps:
                    self.save()
                if self.agree(interrupt.requested):
                    result.interrupted = True
                    break
        bar.close()
        if result.interrupted:
            result.final_eval = {}
        elif evaluated_at == self.step:
            result.final_eval = last_eval
        else:
            result.final_eval = self.evaluate(logger)
        result.step, result.tokens = self.step, self.tokens
        result.checkpoint = self.save()
        logger.close()
        if result.interrupted:
            print(f"saved {result.checkpoint}; continue with --resume", flush=True)
        return result
