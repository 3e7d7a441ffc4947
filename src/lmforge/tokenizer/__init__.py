from lmforge.tokenizer.load import load_gpt2, load_tokenizer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import train_bpe, train_tokenizer, train_unigram

__all__ = ["Tokenizer", "load_tokenizer", "load_gpt2", "train_bpe", "train_unigram", "train_tokenizer"]
