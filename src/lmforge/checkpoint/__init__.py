from lmforge.checkpoint.loading import LoadedModel, load_model, resolve_checkpoint
from lmforge.checkpoint.manager import latest_checkpoint, list_checkpoints, load_trainer_state, save_checkpoint
from lmforge.checkpoint.weights import load_weights, save_weights

__all__ = ["LoadedModel", "load_model", "resolve_checkpoint", "latest_checkpoint", "list_checkpoints",
           "load_trainer_state", "save_checkpoint", "load_weights", "save_weights"]
