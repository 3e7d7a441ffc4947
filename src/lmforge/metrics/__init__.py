from lmforge.metrics.logger import MetricsLogger, read_metrics
from lmforge.metrics.plots import plot_loss_curve

__all__ = ["MetricsLogger", "read_metrics", "plot_loss_curve"]
