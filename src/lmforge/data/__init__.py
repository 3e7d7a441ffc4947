from lmforge.data.loader import WindowLoader, eval_batches
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import TokenShards, read_meta
from lmforge.data.sources import iter_corpus, iter_documents

__all__ = ["WindowLoader", "eval_batches", "prepare_dataset", "TokenShards", "read_meta", "iter_corpus",
           "iter_documents"]
