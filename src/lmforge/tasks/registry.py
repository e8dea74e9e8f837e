"""The fine-tuning tasks by name: `FinetuneConfig.task`, `lmforge finetune <task>` and a task run's
saved config all name a key of `TASKS`. Adding a task is one spec module and one line here."""

from __future__ import annotations

from lmforge.errors import LmforgeError
from lmforge.tasks import chat, classify, ner, qa, seq2seq
from lmforge.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {
    "classify": classify.SPEC,
    "ner": ner.SPEC,
    "qa": qa.SPEC,
    "seq2seq": seq2seq.SPEC,
    "chat": chat.SPEC,
}


def task_spec(name: str) -> TaskSpec:
    """The spec of task `name`; an unknown name is a config error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise LmforgeError(f"config key 'task' is {name!r}; choose one of {', '.join(TASKS)}") from None


def options_of_other_tasks(name: str) -> tuple[str, ...]:
    """The FinetuneConfig fields only other tasks read: the flags `lmforge finetune <name>` leaves out."""
    own = set(task_spec(name).options)
    other = (option for spec in TASKS.values() for option in spec.options if option not in own)
    return tuple(dict.fromkeys(other))
