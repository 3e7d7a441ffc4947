from lmforge.train.pretrain import pretrain
from lmforge.train.trainer import Trainer, TrainResult

__all__ = ["pretrain", "Trainer", "TrainResult"]
