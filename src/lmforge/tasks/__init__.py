"""Fine-tuning task data: readers for classification, NER (CoNLL) and QA (SQuAD), and their metrics.

This layer has no model code: it turns task files into plain dataclasses and scores predictions, so the
same readers and metrics serve training, evaluation and tests. See docs/tasks.md.
"""
