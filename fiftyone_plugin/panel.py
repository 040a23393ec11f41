"""A modal panel that shows the full PAM texts of the current sample's regions next to the image.

Long captions do not fit the App's label tooltips; this lists every region (or only the selected ones)
with its category, definition and captions; for videos, each tracked object's segment captions.
"""

from __future__ import annotations

import re

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from .core import RUNS_INFO_KEY
from .video import captions_field

SHOWN_ATTRIBUTES = (("definition", "Definition"), ("brief_caption", "Brief caption"), ("caption", "Caption"),
                    ("answer", "Answer"))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def _literal(text: str) -> str:
    """Model text shown as written: Markdown characters escaped, line breaks kept."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", "  \n")


def region_texts_markdown(sample, label_fields, selected_ids=frozenset()) -> str:
    """Markdown of the regions' texts in `label_fields` of `sample`; only `selected_ids` when some are selected."""
    sections = []
    for field in label_fields:
        detections = sample[field].detections if sample.get_field(field) is not None else []
        shown = [d for d in detections if not selected_ids or d.id in selected_ids]
        for number, detection in enumerate(shown, start=1):
            lines = [f"**{field} #{number}: {_literal(detection.label) if detection.label else '(no category)'}**"]
            if isinstance(detection, fo.TemporalDetection):  # a video object's caption over a segment
                first, last = detection.support
                lines.append(f"*track {detection.index}, frames {first}-{last}*")
            if detection.confidence is not None:
                lines.append(f"*mask score {detection.confidence:.2f}*")
            for attribute, title in SHOWN_ATTRIBUTES:
                text = detection.get_attribute_value(attribute, None)
                if text:
                    lines.append(f"**{title}:** {_literal(text)}")
            sections.append("\n\n".join(lines))
    return "\n\n---\n\n".join(sections) if sections else "No PAM regions on this sample."


class RegionTexts(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name="region_texts", label="PAM region texts", surfaces="modal",
                               icon="/assets/icon.svg",
                               help_markdown="Full PAM texts of the regions of the sample shown (select regions to "
                                             "narrow the list).")

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        self._refresh(ctx)

    def on_change_selected_labels(self, ctx):
        self._refresh(ctx)

    def _refresh(self, ctx):
        if ctx.current_sample is None:
            ctx.panel.state.texts = "Open a sample to see its PAM region texts."
            return
        fields = list(ctx.dataset.info.get(RUNS_INFO_KEY, {}))
        selected = frozenset(label["label_id"] for label in (ctx.selected_labels or []))
        if ctx.dataset.media_type == "video":  # a video run's texts are its segment captions, all of them
            fields, selected = [captions_field(field) for field in fields], frozenset()
        ctx.panel.state.texts = region_texts_markdown(ctx.dataset[ctx.current_sample], fields, selected)

    def render(self, ctx):
        panel = types.Object()
        panel.md(ctx.panel.state.texts or "", name="texts")
        return types.Property(panel, view=types.GridView(align_x="left", align_y="top", gap=1, px=2, py=2))
