"""The evaluation annotation file (JSONL, one region per line) and converters from the protocols' formats.

One line:

    {"id": "lvis/397133/0",                      # unique; defaults to the line number
     "image": "val2017/000000397133.jpg",        # or "frames": [...] for a video region
     "video": "V_x", "event": 2,                 # optional, with frames: event 2 of video V_x (a streaming event)
     "region": {"box": [x0, y0, x1, y1]},        # or {"points": [[x, y], ...], "labels": [1, ...]}
                                                 # or {"mask": {"size": [h, w], "counts": ...}} (COCO RLE)
                                                 # or {"mask": "masks/0001.png"}
     "refs": ["dog"],                            # category name(s) or reference caption(s)
     "prediction": "..."}                        # optional: score this text instead of running PAM

Relative paths are resolved against `image_root` (default: the JSONL file's folder). The events of one `video`
are captioned in `event` order, each conditioned on the previous event's prediction (PAM's streaming protocol).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..errors import PromptError
from ..prompts import Region, as_region
from ..rle import rle_counts, rle_to_mask, to_compressed
from .metrics import EvalError


@dataclass
class Annotation:
    """One region to evaluate, with its reference texts."""

    id: str
    refs: list[str]
    image: Optional[str] = None
    frames: Optional[list[str]] = None
    region: dict = field(default_factory=dict)
    prediction: Optional[str] = None
    video: Optional[str] = None  # the video a streaming event belongs to (with `frames`)
    event: Optional[int] = None  # the event's place in its video: events are chained in ascending order

    @property
    def media_key(self) -> str:
        """Regions with the same key share one image (and one SAM 2 encoder pass)."""
        return self.image if self.image is not None else "\n".join(self.frames or [])

    def prompt(self) -> Region:
        """The region as a pam_core prompt (an RLE mask is decoded here)."""
        spec = dict(self.region)
        try:
            if isinstance(spec.get("mask"), dict):
                spec["mask"] = rle_to_mask(spec["mask"])
            return as_region(spec)
        except ValueError as exc:
            raise EvalError(f"annotation {self.id}: {exc}") from exc

    def to_json(self) -> dict:
        data = {"id": self.id}
        if self.image is not None:
            data["image"] = self.image
        if self.frames is not None:
            data["frames"] = self.frames
        if self.video is not None:
            data["video"], data["event"] = self.video, self.event
        data["region"] = self.region
        data["refs"] = self.refs
        if self.prediction is not None:
            data["prediction"] = self.prediction
        return data


def _resolve(path: str, root: Path) -> str:
    return str(Path(path) if Path(path).is_absolute() else root / path)


def _parse(data: object, line: int, root: Path) -> Annotation:
    where = f"line {line}"
    if not isinstance(data, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"id", "image", "frames", "video", "event", "region", "refs", "prediction"}
    if unknown:
        raise EvalError(f"{where}: unknown keys {sorted(unknown)}; use id, image, frames, video, event, region, refs, "
                        "prediction")
    ident = str(data.get("id", line))
    where = f"{where} (id {ident})"
    refs = data.get("refs")
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise EvalError(f"{where}: 'refs' must be a non-empty list of non-empty strings")
    image, frames = data.get("image"), data.get("frames")
    if (image is None) == (frames is None):
        raise EvalError(f"{where}: give exactly one of 'image' (a path) or 'frames' (a list of paths)")
    if image is not None and not isinstance(image, str):
        raise EvalError(f"{where}: 'image' must be a path string")
    if frames is not None and not (isinstance(frames, list) and frames and all(isinstance(f, str) for f in frames)):
        raise EvalError(f"{where}: 'frames' must be a non-empty list of paths")
    video, event = data.get("video"), data.get("event")
    if (video is None) != (event is None):
        raise EvalError(f"{where}: give 'video' and 'event' together (the video a streaming event belongs to and "
                        "its place in it)")
    if video is not None:
        if frames is None:
            raise EvalError(f"{where}: a streaming event ('video', 'event') needs 'frames', not 'image'")
        if not isinstance(video, str) or not video:
            raise EvalError(f"{where}: 'video' must be a non-empty string naming the video")
        if not isinstance(event, int) or isinstance(event, bool):
            raise EvalError(f"{where}: 'event' must be a whole number (the event's place in its video)")
    region = data.get("region", {})
    if not isinstance(region, dict):
        raise EvalError(f"{where}: 'region' must be an object with box, points (+labels) or mask")
    region = dict(region)
    if isinstance(region.get("mask"), str):
        region["mask"] = _resolve(region["mask"], root)
    elif isinstance(region.get("mask"), dict):
        try:
            rle_counts(region["mask"])  # checked now for the line number; decoded when PAM runs on it
        except PromptError as exc:
            raise EvalError(f"{where}: the mask is not a valid COCO RLE: {exc}") from None
    prediction = data.get("prediction")
    if prediction is not None and not isinstance(prediction, str):
        raise EvalError(f"{where}: 'prediction' must be a string")
    if prediction is None and not region:
        raise EvalError(f"{where}: a region (box, points or mask) is needed to run PAM on it")
    return Annotation(id=ident, refs=refs, image=_resolve(image, root) if image else None,
                      frames=[_resolve(f, root) for f in frames] if frames else None, region=region,
                      prediction=prediction, video=video, event=event)


def load_annotations(path: str | Path, image_root: Optional[str | Path] = None,
                     limit: Optional[int] = None) -> list[Annotation]:
    """The annotations of a JSONL file (blank lines skipped), checked; at most `limit` of them."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"annotation file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    records, seen, events = [], set(), {}
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:  # bytes that are not UTF-8: see below
        for number, line in enumerate(fh, 1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                json.dumps(data, ensure_ascii=False).encode("utf-8")  # what predictions.jsonl will have to write
            except UnicodeEncodeError:
                raise EvalError(f"{path}, line {number}: not valid UTF-8 (undecodable bytes, or a lone surrogate "
                                "escape such as \\ud800)") from None
            except (ValueError, RecursionError) as exc:  # also digits beyond int's limit, and absurd nesting
                raise EvalError(f"{path}, line {number}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
            record = _parse(data, number, root)
            if record.id in seen:
                raise EvalError(f"{path}, line {number}: duplicate id {record.id!r}")
            seen.add(record.id)
            if record.video is not None:
                other = events.setdefault((record.video, record.event), record.id)
                if other != record.id:
                    raise EvalError(f"{path}, line {number}: event {record.event} of video {record.video!r} is "
                                    f"also region {other!r}; every event of a video needs its own number")
            records.append(record)
    if not records:
        raise EvalError(f"{path} holds no annotations")
    return records


def write_annotations(path: str | Path, records: Iterable[Annotation]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


# --- converters ------------------------------------------------------------------------------------------


def _read_json(path: str | Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise EvalError(f"file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _xywh_to_xyxy(box) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _segmentation(segmentation, height: int, width: int, where: str) -> dict:
    try:
        return to_compressed(segmentation, height, width)
    except PromptError as exc:
        raise EvalError(f"{where}: the segmentation is not valid polygons or COCO RLE: {exc}") from None


def from_coco_captions(path: str | Path, use_masks: bool = False) -> Iterator[Annotation]:
    """COCO-style region captions (GLaMM's `finetune_refcocog_val_captions.json`, VG `test_caption.json`):
    `images` with `file_name`, `annotations` with `image_id`, `bbox` (xywh) and `caption`. Annotations of
    one image with the same box are one region with several references; `use_masks` takes the
    `segmentation` instead of the box where present."""
    data = _read_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise EvalError(f"{path}: expected a COCO-style object with 'images' and 'annotations'")
    images = {img["id"]: img for img in data["images"]}
    regions: dict[tuple, Annotation] = {}
    for ann in data["annotations"]:
        image = images.get(ann.get("image_id"))
        if image is None:
            raise EvalError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
        caption = ann.get("caption", ann.get("description"))
        if not isinstance(caption, str) or "bbox" not in ann:
            raise EvalError(f"{path}: annotation {ann.get('id')} needs a 'bbox' and a 'caption'")
        key = (image["id"], tuple(float(v) for v in ann["bbox"]))
        if key in regions:
            regions[key].refs.append(caption)
            continue
        if use_masks and ann.get("segmentation"):
            region = {"mask": _segmentation(ann["segmentation"], image["height"], image["width"],
                                            f"{path}: annotation {ann.get('id')}")}
        else:
            region = {"box": _xywh_to_xyxy(ann["bbox"])}
        regions[key] = Annotation(id=str(ann.get("id", len(regions))), image=image["file_name"], region=region,
                                  refs=[caption])
    yield from regions.values()


def from_osprey(path: str | Path) -> Iterator[Annotation]:
    """Osprey's LVIS / PACO recognition sets (`lvis_val_1k_category.json`, `paco_val_1k_category.json`): a
    list of images with `file_name`, `height`, `width`, `categories[i]` naming `annotations[i]['segmentation']`."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise EvalError(f"{path}: expected Osprey's list of images with 'categories' and 'annotations'")
    for number, image in enumerate(data):
        try:
            names, anns = image["categories"], image["annotations"]
            height, width, file_name = int(image["height"]), int(image["width"]), image["file_name"]
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalError(f"{path}: image {number} lacks {exc} (needs file_name, height, width, categories, "
                            "annotations)") from None
        if len(names) != len(anns):
            raise EvalError(f"{path}: image {number} has {len(names)} categories but {len(anns)} annotations")
        stem = Path(file_name).stem
        for index, (name, ann) in enumerate(zip(names, anns)):
            segmentation = ann.get("segmentation") if isinstance(ann, dict) else None
            yield Annotation(id=f"{stem}/{index}", image=file_name, refs=[name], region={"mask": _segmentation(
                segmentation, height, width, f"{path}: image {number} ({file_name}) annotation {index}")})


def from_streaming(path: str | Path) -> Iterator[Annotation]:
    """The reference's streaming-caption files: `input_full.jsonl` (events with `frames`, `gt`, `box`) or
    its output layout (events with `gt` and `pred`). One record per event, with its video (the name of the
    video's `image_root`) and its `event_id` as the event order; a prediction is kept.

    The reference does not say whether `box` is xyxy; 242 of its 945 boxes are not valid xyxy boxes. Those
    events keep their box under `region.box_source` and cannot be run through PAM until fixed by hand.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"file not found: {path}") from None
    try:
        videos = [json.loads(text)]  # the output example is one pretty-printed object
    except json.JSONDecodeError:
        try:
            videos = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise EvalError(f"{path}: neither one JSON object nor JSON lines ({exc.msg})") from None
    for number, video in enumerate(videos):
        if not isinstance(video, dict) or not isinstance(video.get("annotations"), list):
            raise EvalError(f"{path}: video {number} has no 'annotations' list")
        root = video.get("image_root", "")
        name = Path(root).name or str(number)
        for position, event in enumerate(video["annotations"], 1):
            if not isinstance(event, dict):
                raise EvalError(f"{path}: video {name} event {position} is not a JSON object")
            order = event.get("event_id", position)
            if not isinstance(order, int) or isinstance(order, bool):
                raise EvalError(f"{path}: video {name} event {position}: 'event_id' must be a whole number, "
                                f"got {order!r}")
            if "gt" not in event:
                raise EvalError(f"{path}: video {name} event {order} has no 'gt' caption")
            region = {}
            boxes = event.get("box") or []
            if boxes:
                x0, y0, x1, y1 = (float(v) for v in boxes[0])
                region = {"box": [x0, y0, x1, y1]} if x1 > x0 and y1 > y0 else {"box_source": boxes[0]}
            frames = [str(Path(root) / f) for f in event.get("frames", [])] or [str(Path(root))]
            yield Annotation(id=f"{name}/{order}", frames=frames, region=region, refs=[event["gt"].strip()],
                             prediction=event.get("pred"), video=name, event=order)


CONVERTERS = {"coco-captions": from_coco_captions, "osprey": from_osprey, "streaming": from_streaming}
