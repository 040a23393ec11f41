"""Task names, the exact task strings of the official PAM notebooks, the chat prompt, and output parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, Union

from .errors import TaskError

# The user-turn strings of the official notebooks, verbatim: the released weights were trained on them.
TASK_STRINGS = {
    "category": {
        "en": "Classify this subject and provide its label.",
        "zh": "对该目标对象进行分类并提供标签",
    },
    "definition": {
        "en": "Classify this subject and provide the label and its definition.",
        "zh": "对该目标对象进行分类并提供标签和名词功能解释",
    },
    "brief": {
        "en": "Provide a concise caption for this subject.",
        "zh": "对该目标对象提供一个概括的描述",
    },
    "detailed": {
        "en": "Provide a comprehensive and detailed description for this subject.",
        "zh": "对该目标对象提供一个全面且详细的描述",
    },
}
TASK_NAMES = tuple(TASK_STRINGS)
LANGUAGES = ("en", "zh")

# Video caption with the previous segment's caption as history ("None"/"无" for the first segment).
VIDEO_CAPTION_STRINGS = {
    "en": "Provide a caption for this subject in this video.\nPrevious caption: {history}",
    "zh": "对该视频中的目标对象提供一个描述。\n历史描述：{history}",
}
NO_HISTORY = {"en": "None", "zh": "无"}

IMAGE_PLACEHOLDER = "<image>"
# conv_templates["qwen_2"] of the reference; not the tokenizer's chat template (its system prompt differs).
PROMPT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n" + IMAGE_PLACEHOLDER + "\n{task}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class Task:
    """A resolved task: its name ("free" for a user instruction), language and the exact user text."""

    name: str
    lang: str
    instruction: str

    @property
    def key(self) -> str:
        """How results name this task's text: the task name, or the instruction itself for a free one."""
        return self.instruction if self.name == "free" else self.name

    def with_history(self, history: str | None) -> "Task":
        """The video caption task conditioned on the previous segment's caption; other tasks are unchanged."""
        return video_caption_task(self.lang, history) if self.name == "video_caption" else self

    def prompt_parts(self) -> tuple[str, str]:
        """The rendered prompt split around the image placeholder: (text before, text after)."""
        before, after = PROMPT_TEMPLATE.format(task=self.instruction).split(IMAGE_PLACEHOLDER)
        return before, after


def resolve_task(task: str, lang: str = "en") -> Task:
    """A task name (category, definition, brief, detailed) or a free instruction of several words."""
    if lang not in LANGUAGES:
        raise TaskError(f"unknown language {lang!r}; use one of {', '.join(LANGUAGES)}")
    if not isinstance(task, str) or not task.strip():
        raise TaskError(f"a task must be one of {', '.join(TASK_NAMES)} or a free instruction, got {task!r}")
    key = task.strip()
    if key in TASK_STRINGS:
        return Task(key, lang, TASK_STRINGS[key][lang])
    if len(key.split()) < 2:
        raise TaskError(
            f"unknown task {task!r}; use one of {', '.join(TASK_NAMES)} or a free instruction of several words"
        )
    if IMAGE_PLACEHOLDER in key:
        raise TaskError(f"a free instruction must not contain {IMAGE_PLACEHOLDER!r}; the region is inserted for you")
    return Task("free", lang, key)


Tasks = Union[str, Sequence[str]]
VIDEO_CAPTION = "caption"  # the task name users give for PAM's video caption task


def resolve_tasks(tasks: Tasks, lang: str = "en") -> list[Task]:
    """One or several task names / free instructions, checked: the one resolver every entry point uses.
    A task may not be asked twice (its text is keyed by the task)."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise TaskError("give at least one task")
    resolved = [resolve_task(name, lang) for name in names]
    keys = [task.key for task in resolved]
    if len(set(keys)) != len(keys):
        raise TaskError(f"a task is repeated in {names}")
    return resolved


def resolve_video_task(task: str, lang: str = "en") -> Task:
    """The task of a video run. "caption" is the reference's video task: its instruction carries the object's
    previous caption (`Task.with_history`). Any image task or free instruction is asked as is (the released
    weights were trained on "caption" for video)."""
    if task == VIDEO_CAPTION:
        return video_caption_task(lang)
    if task == "video_caption":
        raise TaskError(f"the video caption task is called {VIDEO_CAPTION!r}")
    return resolve_task(task, lang)


def task_for_instruction(instruction: str) -> Task:
    """The known task whose exact string this is, else a free instruction (used to replay recorded prompts)."""
    for name, strings in TASK_STRINGS.items():
        for lang, text in strings.items():
            if text == instruction:
                return Task(name, lang, text)
    return Task("free", "en", instruction)


def video_caption_task(lang: str = "en", history: str | None = None) -> Task:
    """The reference's video caption string, conditioned on the previous segment's caption."""
    if lang not in LANGUAGES:
        raise TaskError(f"unknown language {lang!r}; use one of {', '.join(LANGUAGES)}")
    text = VIDEO_CAPTION_STRINGS[lang].format(history=history if history else NO_HISTORY[lang])
    return Task("video_caption", lang, text)


_LABEL_SEPARATORS = re.compile(r"\s*(?:\n+|[:：]\s*|(?<=[.。])\s*)")


def parse_output(task: Task, text: str) -> dict[str, str]:
    """Structured fields for tasks that have structure.

    "category" yields the label. "definition" yields label + definition; PAM writes them as
    "label: definition", "label\\ndefinition" or "Label. Definition ..." (the layout is not specified
    upstream), so the first separator of those kinds splits them and a bare label gets an empty definition.
    """
    text = text.strip()
    if task.name == "category":
        return {"label": text.rstrip(".。")}
    if task.name == "definition":
        parts = _LABEL_SEPARATORS.split(text, maxsplit=1)
        label = parts[0].strip().rstrip(".。")
        definition = parts[1].strip() if len(parts) > 1 else ""
        return {"label": label, "definition": definition}
    return {}
