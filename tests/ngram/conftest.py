"""Fixtures shared by the n-gram tests."""

from __future__ import annotations

import pytest

# Written by hand in another tool's style: spaces, specials anywhere, no <unk>, and the trigram
# "a b c" without its context "a b" (some pruned SRILM models look like this).
HANDMADE_ARPA = """# comment lines before the data section are allowed

\\data\\
ngram 1=5
ngram 2=2
ngram 3=1

\\1-grams:
-0.5 a -0.3
-0.7 b -0.2
-0.9 c
-0.6 </s>
-99 <s> -0.4

\\2-grams:
-0.3 b c -0.15
-0.2 <s> a

\\3-grams:
-0.05 a b c

\\end\\
"""


@pytest.fixture
def handmade_arpa(tmp_path):
    p = tmp_path / "hand.arpa"
    p.write_text(HANDMADE_ARPA, encoding="utf-8")
    return p
