from lmforge.model.params import architecture_table, count_parameters
from lmforge.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model", "count_parameters", "architecture_table"]
