"""Datasets for `pam describe-dataset`: sources read into stream items (`sources`) and the resumable output
folder (`output`). The describing itself is `pam_core.stream.describe_stream`."""

from .output import FORMATS, PART_IMAGES, DatasetOutput, image_rows, output_columns, output_schema
from .sources import AUTO_PROMPT, IMAGE_EXTENSIONS, DatasetSource, SourceRow, open_source

__all__ = ["AUTO_PROMPT", "FORMATS", "IMAGE_EXTENSIONS", "PART_IMAGES", "DatasetOutput", "DatasetSource",
           "SourceRow", "image_rows", "open_source", "output_columns", "output_schema"]
