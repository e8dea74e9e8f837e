"""Fine-tuning tasks: one spec module per task and the data layer the specs share.

`classify`, `ner` and `qa` each define the `TaskSpec` (see `spec`) of one task, and `registry.TASKS`
names them. Under them, `readers` turns task files into plain dataclasses, `features` and `spans`
turn examples into model inputs, `batches` pads them, and `metrics` scores predictions, so the same
pieces serve training, evaluation and tests. The networks (backbone, heads, CRF) are in
`lmforge.models`; loading a pretrained backbone is the workflow's (`lmforge.finetuning`). See
docs/tasks.md.
"""
