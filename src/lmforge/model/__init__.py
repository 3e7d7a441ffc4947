from lmforge.model.params import active_parameters, architecture_table, count_parameters
from lmforge.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model", "count_parameters", "active_parameters", "architecture_table"]
