"""Classic n-gram language models: counting, smoothing, ARPA files and perplexity.

    from lmforge.ngram import fit_ngram, read_arpa, train_ngram, write_arpa
    lm = train_ngram("train.txt", order=5, smoothing="modified-kneser-ney", out="lm5.arpa")
    lm = read_arpa("lm5.arpa")         # an NGramLM; or fit_ngram(list_of_lines, order=5)
    lm.score("the cat sat")            # total log10 probability, <s> ... </s>
    lm.perplexity_file("test.txt")     # NGramEval(perplexity=..., oov=..., tokens=...)

Counting and scoring are vectorised with NumPy; ARPA files are read and written in the format
KenLM and SRILM use, and KenLM scores our files exactly as we do.
"""

from lmforge.ngram.arpa import read_arpa, write_arpa
from lmforge.ngram.model import NGramEval, NGramLM, WordScore
from lmforge.ngram.smoothing import SMOOTHING_METHODS, DiscountFallbackWarning
from lmforge.ngram.train import fit_ngram, train_ngram
from lmforge.ngram.vocab import Vocabulary

__all__ = [
    "SMOOTHING_METHODS",
    "DiscountFallbackWarning",
    "NGramEval",
    "NGramLM",
    "Vocabulary",
    "WordScore",
    "fit_ngram",
    "read_arpa",
    "train_ngram",
    "write_arpa",
]
