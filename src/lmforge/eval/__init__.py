"""lmforge.eval"""

# Held-out .txt files are scored as whole documents, while training reads them in paragraphs:
# evaluation ends every document with the end-of-text token, so splitting a file into paragraphs
# would add tokens (and drop blank lines) and change its perplexity against numbers reported before.
TXT_UNIT = "file"
