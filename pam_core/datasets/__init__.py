"""Datasets for `pam describe-dataset`: sources read into stream items (`sources`), the settings of a run
(`job`), the resumable output folder (`output`) and runs on a Ray cluster (`ray_backend`, needs the `ray`
extra only when used). The describing itself is `pam_core.stream.describe_stream`."""

from .job import DescribeJob, result_from_rows
from .output import FORMATS, PART_IMAGES, DatasetOutput, image_rows, output_columns, output_schema
from .ray_backend import RayWorkers, describe_on_ray
from .sources import AUTO_PROMPT, IMAGE_EXTENSIONS, DatasetSource, SourceRow, open_source

__all__ = ["AUTO_PROMPT", "FORMATS", "IMAGE_EXTENSIONS", "PART_IMAGES", "DatasetOutput", "DatasetSource",
           "DescribeJob", "RayWorkers", "SourceRow", "describe_on_ray", "image_rows", "open_source", "output_columns",
           "output_schema", "result_from_rows"]
