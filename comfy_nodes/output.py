"""Nodes that turn PAM_REGIONS into text, JSON and a drawn overlay."""

from __future__ import annotations

import json

import numpy as np
import torch
from comfy_api.latest import io, ui

from pam_core import PromptError
from pam_core.io import draw_overlay, load_image

from .types import PAMRegionsType

LABELS = ("text", "label", "index")


class PAMRegionsToText(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMRegionsToText", display_name="PAM Regions to Text / JSON", category="PAM",
            description="The regions' texts as plain text (one line per region) and as a JSON array with "
                        "image index, prompt kind, box, mask area, scores, task, language, text and parsed fields.",
            inputs=[PAMRegionsType.Input("regions")],
            outputs=[io.String.Output(display_name="text"), io.String.Output(display_name="json")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, regions) -> io.NodeOutput:
        text = "\n".join(regions.lines())
        return io.NodeOutput(text, json.dumps(regions.to_json(), ensure_ascii=False, indent=2),
                             ui=ui.PreviewText(text))


def _label(kind: str, index: int, result) -> str:
    if kind == "index":
        return str(index + 1)
    text = result.fields.get("label", result.text) if kind == "label" else " ".join(result.text.split())
    return f"{result.concept}: {text}" if result.concept is not None else text


class PAMOverlay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMOverlay", display_name="PAM Overlay", category="PAM",
            description="Draws every region on its image: the mask tinted, its box outlined, its text written.",
            inputs=[io.Image.Input("image"), PAMRegionsType.Input("regions"),
                    io.Combo.Input("label", options=list(LABELS), default="text",
                                   tooltip="What to write at each box: the text, the parsed label "
                                           "(category / definition tasks), or the region number.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image, regions, label) -> io.NodeOutput:
        if image.shape[0] != len(regions.per_image):
            raise PromptError(f"{image.shape[0]} images but regions of {len(regions.per_image)} images: connect "
                              f"the image batch the regions were found on")
        if tuple(image.shape[1:3]) != regions.sizes[0]:
            raise PromptError(f"image is {image.shape[2]}x{image.shape[1]} but the regions were found on a "
                              f"{regions.sizes[0][1]}x{regions.sizes[0][0]} image")
        drawn = [np.asarray(draw_overlay(load_image(frame), [(r.mask, r.box, _label(label, i, r))
                                                             for i, r in enumerate(results)]))
                 for frame, results in zip(image, regions.per_image)]
        return io.NodeOutput(torch.from_numpy(np.stack(drawn)).float() / 255.0)
