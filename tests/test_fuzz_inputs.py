"""Property-based fuzzing of what users hand pam_core: annotation files and region prompts either work or
fail with one PAMError (a clear message), never another exception type or a hang."""

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pam_core.errors import PAMError
from pam_core.evaluation import load_annotations
from pam_core.prompts import as_region

FUZZ = settings(max_examples=150, deadline=10_000, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
           | st.sampled_from([0, 1, -1, 1e308, 10**400, "", "\u2028", "\ud800", "../x.png", "\x00"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
numbers = st.integers(-20, 80) | st.floats(-20, 80) | st.floats() | st.sampled_from([10**400, True, "3"])
points = st.lists(st.lists(numbers, max_size=3), max_size=4)
rles = st.fixed_dictionaries(
    {"size": st.lists(st.integers(-1, 6), max_size=3) | st.just([4, 5]) | st.lists(st.integers(0, 2**40), max_size=2)
     | json_values,
     "counts": st.lists(st.integers(-2, 30), max_size=7) | st.text(st.characters(min_codepoint=32, max_codepoint=130),
                                                                     max_size=8) | json_values})
masks = (rles | st.text(max_size=10) | st.lists(st.lists(numbers, max_size=5), max_size=5)
         | hnp.arrays(st.sampled_from([bool, np.uint8, np.float32, np.int64, "U2", object]),
                      hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
regions = st.fixed_dictionaries({}, optional={
    "box": st.lists(numbers, max_size=6) | json_values, "points": points | json_values,
    "labels": st.lists(numbers, max_size=5) | json_values, "mask": masks, "extra": json_values})


@FUZZ
@given(region=regions | json_values, width=st.integers(1, 64), height=st.integers(1, 64))
@example(region={"points": ":"}, width=8, height=8)  # once ValueError, TypeError, ... escaped
@example(region={"points": False}, width=8, height=8)
@example(region={"box": {}}, width=8, height=8)
@example(region={"box": [10**400, 0, 1, 1]}, width=8, height=8)
@example(region={"points": [[1, 1]], "labels": [float("inf")]}, width=8, height=8)
@example(region={"mask": [[1, 0], [1]]}, width=2, height=2)
@example(region={"mask": [["a", "b"]]}, width=2, height=1)
def test_a_region_prompt_is_valid_or_a_pam_error(region, width, height):
    try:
        as_region(region).validated(width, height)
    except PAMError as exc:
        assert str(exc)


json_regions = st.fixed_dictionaries({}, optional={
    "box": st.lists(numbers, max_size=6) | json_values, "points": points | json_values,
    "labels": st.lists(numbers, max_size=5) | json_values,
    "mask": rles | st.text(max_size=10) | st.lists(st.lists(numbers, max_size=5), max_size=5), "extra": json_values})
envelopes = st.fixed_dictionaries({"image": st.just("a.png"), "refs": st.just(["a dog"]), "region": json_regions})
records = envelopes | st.fixed_dictionaries({}, optional={
    "id": json_values, "image": st.text(max_size=10) | json_values,
    "frames": st.lists(st.text(max_size=5)) | json_values, "region": json_regions | json_values,
    "video": st.text(max_size=5) | json_values, "event": st.integers() | json_values,
    "refs": st.lists(st.text(max_size=10), max_size=3) | st.text() | json_values,
    "prediction": st.text(max_size=10) | json_values, "colour": json_values})
lines = (records.map(lambda r: json.dumps(r).encode()) | json_values.map(lambda v: json.dumps(v).encode())
         | st.binary(max_size=20) | st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")))


@FUZZ
@given(content=st.lists(lines, max_size=4), separator=st.sampled_from([b"\n", b"\r\n", b"\r"]))
@example(content=[b"\x80"], separator=b"\n")  # once UnicodeDecodeError, RecursionError, ... escaped
@example(content=[b'{"image": "a.png", "refs": ["\\ud800"]}'], separator=b"\n")
@example(content=[b"[" * 100_000], separator=b"\n")
@example(content=[b"1" * 5000], separator=b"\n")
@example(content=[b'{"image": "a.png", "refs": ["x"], "region": {"points": 7}}'], separator=b"\n")
def test_an_annotation_file_loads_or_is_a_pam_error(content, separator):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "annotations.jsonl"
        path.write_bytes(separator.join(content))
        try:
            for record in load_annotations(path):
                if record.region:
                    record.prompt().validated(16, 12)
        except PAMError as exc:
            assert str(exc)
