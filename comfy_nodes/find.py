"""PAM Find & Describe: text concepts in, every instance SAM 3 finds described by PAM (thin over `pam.find`)."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from pam_core import WeightsNotFoundError
from pam_core.checkpoint import DEFAULT_SAM3, SAM3_MODELS
from pam_core.concepts import DEFAULT_MAX_INSTANCES, DEFAULT_THRESHOLD, check_find_settings, checked_concepts
from pam_core.concepts import concept_finder as load_concept_finder

from .describe import BatchRequest, checked_tasks, describe_batch, region_outputs, text_inputs
from .loader import SAM3_FOLDER, local_checkpoints
from .prompts import parse_concepts
from .types import PAMModelType


def sam3_help() -> str:
    return (f"Put a transformers-format SAM 3 folder (config.json, model.safetensors, processor and tokenizer files) "
            f"into one of: {', '.join(folder_paths.get_folder_paths(SAM3_FOLDER))}, then press R to refresh the "
            f"list. {DEFAULT_SAM3} is gated: accept the SAM License at https://huggingface.co/{DEFAULT_SAM3}, then "
            f"`hf download {DEFAULT_SAM3} --exclude '*.pt' --local-dir models/{SAM3_FOLDER}/sam3`. This node never "
            f"downloads.")


class PAMFindDescribe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMFindDescribe", display_name="PAM Find & Describe", category="PAM",
            description="Finds every instance of each text concept ('person', 'red car') with SAM 3 and describes "
                        "each one with PAM as a box prompt: masks (PAM's), captions and regions (with the concept "
                        "and SAM 3's score). SAM 3 comes from models/sam3, or from the Hugging Face cache for the "
                        "Hub id; it is never downloaded here.",
            inputs=[
                PAMModelType.Input("pam_model"),
                io.Image.Input("image"),
                io.String.Input("concepts", default="", multiline=True,
                                tooltip="What to find: one noun phrase per line, or comma-separated."),
                io.Combo.Input("sam3", options=[*sorted(local_checkpoints(SAM3_FOLDER)), *SAM3_MODELS],
                               tooltip="A SAM 3 folder under models/sam3 (transformers format), or the Hub id "
                                       "(loaded from the Hugging Face cache only)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="Keep instances whose SAM 3 score is above this."),
                io.Int.Input("max_instances", default=DEFAULT_MAX_INSTANCES, min=1, max=200,
                             tooltip="At most this many instances per concept and image, the surest first."),
                *text_inputs(),
            ],
            outputs=region_outputs(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, pam_model, image, concepts, sam3, threshold, max_instances, task, lang, instruction="",
                max_new_tokens=512, more_tasks="") -> io.NodeOutput:
        names = checked_concepts(parse_concepts(concepts))
        check_find_settings(threshold, max_instances)
        tasks = checked_tasks(task, instruction, more_tasks, lang)
        local = local_checkpoints(SAM3_FOLDER)
        if sam3 not in local and sam3 not in SAM3_MODELS:  # a listed folder that is gone: never read it as a Hub id
            raise WeightsNotFoundError(f"SAM 3 folder {sam3!r} is not in models/{SAM3_FOLDER}. {sam3_help()}")
        try:
            finder = load_concept_finder(local.get(sam3, sam3), local_files_only=True)
        except WeightsNotFoundError as exc:
            raise WeightsNotFoundError(f"{exc}\n{sam3_help()}") from exc

        request = BatchRequest(tasks, lang, concepts=names, threshold=threshold, max_instances=max_instances,
                               sam3=finder)
        try:
            return describe_batch(pam_model, image, request, max_new_tokens)
        finally:  # SAM 3 rests where PAM rests between runs
            if not pam_model.keep_loaded:
                finder.to(pam_model.offload_device)
