from lmforge.eval.perplexity import evaluate_batches

__all__ = ["evaluate_batches"]
