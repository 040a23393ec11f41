"""Run by test_fiftyone_stream.py in its own process, which it SIGKILLs mid-run: `apply_pam` over a dataset of the
session's mongod, saving 2 samples per bulk write and decoding one region at a time, so that samples finish one
after the other and the kill lands between writes.

Arguments: dataset name, PAM checkpoint, SAM 2 weights, max new tokens.
"""

import sys

import fiftyone as fo

from fiftyone_plugin import apply_pam, core
from pam_core import PAM

if __name__ == "__main__":
    name, checkpoint, sam2, tokens = sys.argv[1:]
    core.BATCH_SIZE = 2
    pam = PAM.from_pretrained(checkpoint, sam2=sam2, device="cpu", local_files_only=True, max_batch=1)
    apply_pam(fo.load_dataset(name), prompt_field="ground_truth", tasks="category", model=pam,
              max_new_tokens=int(tokens))
