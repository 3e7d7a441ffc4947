from lmforge.inference.engine import Completion, Engine
from lmforge.inference.kv_cache import KVCache
from lmforge.inference.sampling import SamplingParams, sample_next

__all__ = ["Engine", "Completion", "KVCache", "SamplingParams", "sample_next"]
