"""Data parallelism across torchrun processes: DDP (replicated weights, all-reduced gradients) or FSDP2 (`fully_shard`
per block and on the root, weights/gradients/optimizer state sharded), with optional activation checkpointing.

The same config trains on one process or on many: `torchrun --nproc_per_node N -m lmforge train CONFIG` with
`train.parallel = "ddp"` or `"fsdp"`. Without torchrun (WORLD_SIZE unset or 1) nothing is wrapped.

- Data: every rank builds the same loader with its rank/world; a global batch of batch_size x world windows is split
  without overlap, and gradient accumulation keeps train.tokens_per_step (Trainer divides by world_size).
- Logging, the progress bar, metrics.jsonl and checkpoint files come from rank 0 only; the logged loss is the
  average over ranks. Evaluation runs on every rank on the same batches (FSDP needs every rank in the forward), so
  every rank takes the same early-stopping decision.
- Checkpoints stay the single-process format (one model.safetensors + optimizer.safetensors with full tensors): FSDP
  gathers a full state dict to CPU on rank 0 first. A checkpoint therefore resumes on any number of processes, with
  DDP, FSDP or none. Every rank reads the checkpoint on resume, so multi-node runs need the run directory on a shared
  filesystem.
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from lmforge.checkpoint import load_trainer_state, load_weights, save_checkpoint
from lmforge.checkpoint.manager import checkpoint_dir
from lmforge.config import Config
from lmforge.errors import CheckpointError, ConfigError
from lmforge.metrics import MetricsLogger
from lmforge.train.trainer import Trainer
from lmforge.utils.device import resolve_device


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    parallel: str = "none"
    cpu_group: Any = None  # a gloo group for host-side flags (stop / time limit) that never touches the GPU stream

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.cpu_group)


def init_distributed(cfg: Config) -> DistContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group (NCCL on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(cfg.train.device), parallel=cfg.train.parallel)
    if cfg.train.parallel == "none":
        raise ConfigError(f"launched as {world} processes (WORLD_SIZE={world}) but train.parallel = 'none'; "
                          f"set train.parallel = 'ddp' or 'fsdp' (e.g. --set train.parallel=ddp)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.train.device
    if want == "mps":
        raise ConfigError("train.parallel across processes needs CUDA or the CPU, not MPS")
    use_cuda = want in ("auto", "cuda") and torch.cuda.is_available()
    if want == "cuda" and not use_cuda:
        raise ConfigError("train.device = 'cuda' but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                **({"device_id": device} if use_cuda else {}))
    cpu_group = dist.new_group(backend="gloo") if use_cuda else None
    if rank != 0:  # one copy of every message: other ranks print only what is flagged force=True
        _quiet_print()
    return DistContext(rank, world, local_rank, device, cfg.train.parallel, cpu_group)


def _quiet_print() -> None:
    original = builtins.print

    def print_(*args, force: bool = False, **kwargs):
        if force:
            original(*args, **kwargs)

    builtins.print = print_


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# Model wrapping


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations during backward instead of keeping them. The block's forward is wrapped
    in place (no wrapper module), so parameter names and checkpoints do not change."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        forward = block.forward

        @functools.wraps(forward)
        def wrapped(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled() and kwargs.get("cache", args[3] if len(args) > 3 else None) is None:
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = wrapped


def wrap_model(model: torch.nn.Module, cfg: Config, ctx: DistContext, dtype: torch.dtype) -> torch.nn.Module:
    """Activation checkpointing (if set), then DDP or FSDP2 when running as several processes."""
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if not ctx.active:
        return model
    if ctx.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False)  # RoPE tables are recomputed, not synced
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if dtype == torch.float16:
        raise ConfigError("train.parallel = 'fsdp' needs bf16 or fp32 (fp16 loss scaling is not sharded); "
                          "set train.dtype = 'bf16'")
    if ctx.device.type == "cuda" and dtype == torch.bfloat16:  # bf16 compute, fp32 master weights and reductions
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------------------------------------------------
# Full state dicts in the single-process checkpoint format


def _tied_aliases(module: torch.nn.Module) -> dict[str, str]:
    """Second names of shared parameters (lm_head.weight -> embed.weight when tied)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _param_fqns(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


class _FullState:
    """Duck-types the .state_dict() / .load_state_dict() that save_checkpoint / load_trainer_state call."""

    def __init__(self, get, put=None) -> None:
        self._get, self._put = get, put

    def state_dict(self) -> dict:
        return self._get()

    def load_state_dict(self, state: dict) -> None:
        self._put(state)


def _fqn_to_index(optim_sd: dict) -> dict:
    """get_optimizer_state_dict's {fqn: state} -> torch's {index: state}, indices in param-group order."""
    index, groups = {}, []
    for g in optim_sd["param_groups"]:
        ids = []
        for fqn in g["params"]:
            index[fqn] = len(index)
            ids.append(index[fqn])
        groups.append({**g, "params": ids})
    return {"state": {index[k]: v for k, v in optim_sd["state"].items()}, "param_groups": groups}


class DistributedTrainer(Trainer):
    """The shared loop, made rank-aware: gradient sync only on the last micro-batch, averaged logged loss, rank-0
    logging and checkpoint files, agreed stop decisions, full-state checkpoints under FSDP."""

    def __init__(self, cfg: Config, model: torch.nn.Module, loader, eval_fn, device: torch.device,
                 dtype: torch.dtype, ctx: DistContext, progress: bool = True, early_stopping_patience: int = 0):
        self.ctx = ctx
        self.world_size = ctx.world
        self.is_main = ctx.is_main
        if eval_fn is not None and ctx.parallel == "ddp":  # evaluate the plain module: no DDP hooks, no collectives
            inner_eval = eval_fn
            eval_fn = lambda m: inner_eval(unwrap(m))  # noqa: E731
        super().__init__(cfg, model, loader, eval_fn, device, dtype, progress and ctx.is_main,
                         early_stopping_patience)

    # -- the step -----------------------------------------------------------------------------------------------------
    def sync_context(self, last: bool):
        if self.ctx.parallel == "ddp":
            return contextlib.nullcontext() if last else self.model.no_sync()
        self.model.set_requires_gradient_sync(last)  # FSDP2: reduce-scatter only after the last micro-batch
        return contextlib.nullcontext()

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad_norm = super().train_step(lr)
        loss = loss.detach().clone()
        dist.all_reduce(loss)  # SUM (gloo has no AVG); every rank's micro-batches have the same size
        loss /= self.ctx.world
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm is a DTensor
            grad_norm = grad_norm.full_tensor()
        return loss, grad_norm

    def agree(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ctx.cpu_group)
        return bool(t.item())

    def progress_fraction(self) -> float:
        if self.cfg.train.time_limit_min > 0:  # one clock for every rank, so the learning rate stays identical
            t = torch.tensor([self.elapsed], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ctx.cpu_group)
            self.elapsed = float(t.item())
        return super().progress_fraction()

    def open_logger(self, resume_step: int | None):
        return MetricsLogger(self.run_dir / "metrics.jsonl", resume_step) if self.is_main else _NullLogger()

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save(self) -> Path:
        keep = self.cfg.train.keep_checkpoints
        if self.ctx.parallel == "ddp":
            if self.is_main:
                save_checkpoint(self.run_dir, self.cfg, unwrap(self.model), self.optimizer, self.state(), keep=keep)
        else:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd = get_model_state_dict(self.model, options=opts)  # collective: every rank takes part
            optim_sd = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
            if self.is_main:
                for alias in _tied_aliases(self.model):
                    model_sd.pop(alias, None)
                save_checkpoint(self.run_dir, self.cfg, _FullState(lambda: model_sd),
                                _FullState(lambda: _fqn_to_index(optim_sd)), self.state(), keep=keep)
        self.ctx.barrier()
        return checkpoint_dir(self.run_dir, self.step)

    def load_checkpoint_state(self, ckpt: Path) -> dict:
        if self.ctx.parallel == "ddp":
            load_weights(unwrap(self.model), ckpt / "model.safetensors")
            return load_trainer_state(ckpt, self.optimizer)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        try:
            model_sd = load_file(str(ckpt / "model.safetensors"))
        except Exception as e:
            raise CheckpointError(f"{ckpt / 'model.safetensors'}: not a readable safetensors file ({e})") from None
        for alias, name in _tied_aliases(self.model).items():
            if name in model_sd:
                model_sd.setdefault(alias, model_sd[name])
        try:
            set_model_state_dict(self.model, model_sd, options=opts)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt} does not fit this model config: {e}") from None
        fqns = _param_fqns(self.model, self.optimizer)

        def put(indexed: dict) -> None:
            by_index = [f for group in fqns for f in group]
            state = {by_index[int(i)]: v for i, v in indexed["state"].items()}
            groups = [{**g, "params": names} for g, names in zip(indexed["param_groups"], fqns)]
            set_optimizer_state_dict(self.model, self.optimizer, {"state": state, "param_groups": groups},
                                     options=opts)

        return load_trainer_state(ckpt, _FullState(None, put))


class _NullLogger:
    path = None

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
