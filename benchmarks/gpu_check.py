"""GPU readiness (issue #13): one run on one GPU measures everything, in sections, each written to the JSON as it
finishes (a section that fails records its error and the others still run):

  environment  versions, the device, TF32 settings
  parity       `pam parity` (float32, TF32 off) on every fixture under --fixtures, in a child process
  bf16         the fixture in bfloat16 against float32: token agreement rate, identical texts, mask IoU
  regions      real size (random SAM 2.1 Hiera-L + Qwen2.5-1.5B shape, bfloat16), warm: 1, 8 and 64 regions of one
               image, each call with its own encoder pass: regions/s, tokens/s, peak GPU memory
  stream       real size: 200 images x 3 regions through `describe_stream`
  per_image    the same images through `describe` one by one, stopped in time to leave the decode sections their share
               of --budget-seconds; then the comparison: streaming / per-image regions/s and identical token ids,
               against the targets
  decode       real size: milliseconds per decoding step at 1, 16 and 64 rows after the real 1,071-position prompt
  compiled     `compile_decoder` (torch.compile): the fixture's token ids in float32 (TF32 off) against eager decoding,
               then the decode section's steps compiled; skipped when too little of the budget is left
  compiled_stream  the stream section's images through `describe_stream` with the compiled decoder, against the
               per-image path and the targets as the stream is (skipped as `compiled` is)

Every text is forced to --new-tokens tokens (16). `--cpu-smoke` runs every section on the CPU at tiny size (a
random checkpoint from pam_core.synthetic in float32, fewer regions and images): CI's smoke test.
Start it with benchmarks/gpu_check.sh, which sets up the Python environment; docs/performance.md has the details.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable, Optional

import batching
import dataset

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / ".gpu-check" / "fixtures.pack.xz"  # written by `gpu_check.sh --prepare`, carried to the GPU machine
SECTIONS = ("environment", "parity", "bf16", "regions", "stream", "per_image", "decode", "compiled",
            "compiled_stream")
BF16_TASKS = ["category", "detailed"]
# issue #13: H200, real size, bf16, warm, 16-token texts, 3 regions/image
STREAM_TARGET_REGIONS_PER_S = 25.0
STREAM_TARGET_SPEEDUP = 10.0
BUDGET_MARGIN_S = 20.0  # kept for writing the report after the per-image path
MIN_PER_IMAGE_S = 20.0
MIN_COMPILE_S = 150.0  # budget left that the compiled decoder's steps need (inductor compiles the real-size LLM first)
DECODE_RESERVE_S = 240.0  # what the per-image path leaves of the budget for the decode sections after it
DECODE_WARMUP_STEPS = 2
SUMMARY_LINE = re.compile(r"parity: (\d+) passed, (\d+) failed, (\d+) not supported")


# --- the fixtures travel packed: duplicate tensors stored once, xz-compressed, restored byte for byte -----------------

def _payload_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the tensors in a safetensors file or a torch zip archive (the parts other files may repeat:
    the release layout stores SAM 2 twice and the tied lm_head), sorted; nothing for other files."""
    if data[:2] == b"PK":
        ranges = []
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.compress_type == zipfile.ZIP_STORED:
                    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
                    start = info.header_offset + 30 + name_len + extra_len
                    ranges.append((start, start + info.file_size))
        return sorted(ranges)
    if len(data) > 8:
        header_len = struct.unpack("<Q", data[:8])[0]
        if 8 + header_len <= len(data) and data[8:9] == b"{":
            try:
                header = json.loads(data[8:8 + header_len])
                return sorted((8 + header_len + v["data_offsets"][0], 8 + header_len + v["data_offsets"][1])
                              for k, v in header.items() if k != "__metadata__")
            except (ValueError, KeyError, TypeError):
                return []
    return []


def pack_fixtures(root: Path, pack: Path) -> None:
    """Every file under `root` into one xz file, each distinct tensor stored once."""
    chunks: dict[str, int] = {}
    blob, files = bytearray(), {}
    spans: list[list[int]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        cuts, position = [], 0
        for start, end in _payload_ranges(data):
            cuts += [(position, start), (start, end)]
            position = end
        cuts.append((position, len(data)))
        recipe = []
        for start, end in cuts:
            if end <= start:
                continue
            digest = hashlib.sha256(data[start:end]).hexdigest()
            if digest not in chunks:
                chunks[digest] = len(spans)
                spans.append([len(blob), end - start])
                blob += data[start:end]
            recipe.append(chunks[digest])
        files[path.relative_to(root).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "chunks": recipe}
    header = json.dumps({"files": files, "chunks": spans}).encode()
    pack.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(pack, "wb", preset=6) as out:
        out.write(struct.pack("<Q", len(header)) + header)
        out.write(blob)


def unpack_fixtures(pack: Path, root: Path) -> None:
    """Restore what `pack_fixtures` stored under `root`, every file checked against its sha256."""
    with lzma.open(pack, "rb") as source:
        header = json.loads(source.read(struct.unpack("<Q", source.read(8))[0]))
        blob = source.read()
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=root.parent))
    for name, entry in header["files"].items():
        data = b"".join(blob[header["chunks"][i][0]:sum(header["chunks"][i])] for i in entry["chunks"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise RuntimeError(f"{pack}: {name} does not match its sha256; pack it again")
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    staging.rename(root)


def fixtures_root(explicit: Optional[str]) -> Path:
    """--fixtures, else ../shared/fixtures beside the repository, else the carried pack, unpacked once."""
    if explicit:
        return Path(explicit)
    beside = REPO.parent / "shared" / "fixtures"
    if beside.is_dir():
        return beside
    unpacked = PACK.parent / "fixtures"
    if not unpacked.is_dir() and PACK.is_file():
        unpack_fixtures(PACK, unpacked)
    if unpacked.is_dir():
        return unpacked
    raise FileNotFoundError(f"no parity fixtures: neither {beside} nor {PACK}; run `bash benchmarks/gpu_check.sh "
                            "--prepare` where ../shared/fixtures exists, and carry .gpu-check")


def fixtures(root: Path) -> list[Path]:
    found = sorted(spec.parent for spec in root.glob("*/spec.json"))
    if not found:
        raise FileNotFoundError(f"{root} holds no fixture (no */spec.json)")
    return found


# --- sections ------------------------------------------------------------------------------------------------------

class GpuCheck:
    """The sections, in order; the real-size model is written, loaded and warmed up once, by the first that needs it,
    and the stream's and the per-image path's token ids stay here for the comparison."""

    def __init__(self, plan: argparse.Namespace):
        self.plan = plan
        self.started = time.perf_counter()
        self.model: dict = {}  # how the real-size model was made: checkpoint, seconds to write, load, warm up
        self.measured: dict[str, dict] = {}  # "stream" / "per_image" -> the run with its token ids
        self._pam = None

    def environment(self) -> dict:
        import torch
        import transformers

        info = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "cpus": os.cpu_count(), "device": self.plan.device,
                "cuda": torch.cuda.is_available(), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        if self.plan.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            info |= {"gpu": props.name, "gpu_memory_gb": props.total_memory / 2**30,
                     "capability": list(torch.cuda.get_device_capability(0)), "cuda_version": torch.version.cuda}
        return info

    def parity(self) -> list[dict]:
        """`pam parity` on each fixture, in a child process as a user runs it; its output goes to this log too."""
        rows = []
        for fixture in fixtures(fixtures_root(self.plan.fixtures)):
            command = [sys.executable, "-m", "pam_core.cli", "parity", str(fixture), "--device", self.plan.device]
            for case in self.plan.parity_cases:
                command += ["--case", case]
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            print(proc.stdout + proc.stderr, flush=True)
            found = SUMMARY_LINE.search(proc.stdout)
            passed, failed, unsupported = (int(n) for n in found.groups()) if found else (0, 0, 0)
            rows.append({"fixture": fixture.name, "device": self.plan.device,
                         "cases": self.plan.parity_cases or "all", "exit_status": proc.returncode, "passed": passed,
                         "failed": failed, "not_supported": unsupported, "seconds": time.perf_counter() - start,
                         "failures": [line for line in proc.stdout.splitlines() if re.search(r"  FAIL(  |$)", line)],
                         "error": None if found else (proc.stderr.strip().splitlines() or ["no summary line"])[-1]})
        return rows

    def bf16(self) -> dict:
        """The first fixture's model in bfloat16 against float32 on the same regions and tasks, TF32 off, so that
        only the dtype differs: token agreement (equal ids at equal positions), identical texts, mask IoU."""
        import numpy as np

        from pam_core import PAM, Region
        from pam_core.parity import fixture_sam2_weights, ieee_float32

        fixture = fixtures(fixtures_root(self.plan.fixtures))[0]
        image = fixture / json.loads((fixture / "spec.json").read_text())["image"]["path"]
        boxes = [Region.from_box(box) for box in dataset.dataset_boxes(0, self.plan.bf16_regions)]
        results = {}
        with ieee_float32():
            for dtype in ("float32", "bfloat16"):
                pam = PAM.from_pretrained(fixture / "checkpoint", sam2=fixture_sam2_weights(fixture),
                                          device=self.plan.device, dtype=dtype, local_files_only=True)
                results[dtype] = pam.describe(image, boxes, task=BF16_TASKS, generation=self.settings())
        positions = equal_positions = identical = 0
        ious = []
        for full, half in zip(results["float32"], results["bfloat16"]):
            for task, ids in full.token_ids.items():
                other = half.token_ids[task]
                positions += max(len(ids), len(other))
                equal_positions += sum(a == b for a, b in zip(ids, other))
                identical += ids == other
            union = np.logical_or(full.mask, half.mask).sum()
            ious.append(float(np.logical_and(full.mask, half.mask).sum() / union) if union else 1.0)
        return {"fixture": fixture.name, "device": self.plan.device, "regions": len(boxes), "tasks": BF16_TASKS,
                "texts": len(boxes) * len(BF16_TASKS), "identical_texts": identical,
                "token_agreement": equal_positions / positions if positions else 1.0,
                "mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious))}

    def regions(self) -> dict:
        """N regions of one picture per call, best of --repeats; no feature cache, so each call encodes its image."""
        from pam_core import PAM, Region, StreamItem

        pam = PAM(self.pam().model, cache_size=0)
        boxes = [Region.from_box(box) for box in dataset.dataset_boxes(0, max(self.plan.regions))]
        rows = []
        for count in self.plan.regions:
            item = StreamItem(batching.picture(), boxes[:count], id="picture")
            runs = [self._timed(dataset.per_image, pam, [item], self.plan.task, self.settings())
                    for _ in range(self.plan.repeats)]
            rows.append(_numbers(min(runs, key=lambda r: r["seconds"])))
        return {"model": self.model, "rows": rows}

    def stream(self) -> dict:
        """The dataset through `describe_stream`."""
        pam, items = self.pam(), self.items()
        self.measured["stream"] = self._timed(dataset.streamed, pam, items, self.plan.task, self.settings())
        return {"model": self.model, **_numbers(self.measured["stream"])}

    def decode(self) -> dict:
        """Decoding steps alone, eager: launch overhead shows as step times that stay flat from 1 to 64 rows."""
        return {"model": self.model, "steps": self._decode_steps(compiled=False)}

    def compiled(self) -> dict:
        """`compile_decoder`: the fixture's float32 token ids against eager decoding, then the decode section's step
        times through the compiled steps. Skipped, and says so, when less than MIN_COMPILE_S of --budget-seconds is
        left (inductor compiles first); its own section, so that a compile that outruns the run costs no other."""
        skipped = self._compile_skipped()
        if skipped:
            return skipped
        return {"identity": self._compiled_identity(), "steps": self._decode_steps(compiled=True)}

    def compiled_stream(self) -> dict:
        """The stream section's images again, decoding through the compiled steps (compiled by the section before,
        else first here): regions/s against the per-image path, the other way to meet the GPU targets."""
        from pam_core import PAM

        skipped = self._compile_skipped()
        if skipped:
            return skipped
        compiled = PAM(self.pam().model, cache_size=0, compile_decoder=True)
        self.measured["compiled_stream"] = self._timed(dataset.streamed, compiled, self.items(), self.plan.task,
                                                       self.settings())
        return {"model": self.model, **_numbers(self.measured["compiled_stream"])}

    def _compile_skipped(self) -> Optional[dict]:
        left = self.plan.budget_seconds - (time.perf_counter() - self.started)
        if left < MIN_COMPILE_S and not self.plan.cpu_smoke:
            return {"skipped": f"{left:.0f} s of --budget-seconds left, {MIN_COMPILE_S:g} s needed"}
        return None

    def _compiled_identity(self) -> dict:
        """The fixture in float32 (TF32 off), `describe` eager and with `compile_decoder`: identical token ids?"""
        from pam_core import PAM, Region
        from pam_core.parity import fixture_sam2_weights, ieee_float32

        fixture = fixtures(fixtures_root(self.plan.fixtures))[0]
        image = fixture / json.loads((fixture / "spec.json").read_text())["image"]["path"]
        boxes = [Region.from_box(box) for box in dataset.dataset_boxes(0, self.plan.bf16_regions)]
        with ieee_float32():
            eager = PAM.from_pretrained(fixture / "checkpoint", sam2=fixture_sam2_weights(fixture),
                                        device=self.plan.device, dtype="float32", local_files_only=True)
            start = time.perf_counter()
            compiled = PAM(eager.model, compile_decoder=True).describe(image, boxes, task=BF16_TASKS,
                                                                       generation=self.settings())
            seconds = time.perf_counter() - start
            reference = eager.describe(image, boxes, task=BF16_TASKS, generation=self.settings())
        texts = [(a.token_ids[t], b.token_ids[t]) for a, b in zip(reference, compiled) for t in a.token_ids]
        return {"fixture": fixture.name, "texts": len(texts), "identical_texts": sum(a == b for a, b in texts),
                "first_call_seconds": seconds}

    def _decode_steps(self, compiled: bool) -> list[dict]:
        """Per row count: one prefill of the real prompt (a region of the picture, the task's text), then
        DECODE_WARMUP_STEPS steps and --decode-steps timed ones, no row finishing on the way."""
        import torch

        from pam_core import GenerationSettings, Region
        from pam_core.generation import DecodeBatch
        from pam_core.tasks import resolve_tasks

        pam = self.pam()
        model = pam.model
        _, features = pam.encode(batching.picture())
        visual = pam.analyze(features, Region.from_box(dataset.dataset_boxes(0, 1)[0])).visual_embeds
        task = resolve_tasks(self.plan.task, "en")[0]
        steps = self.plan.decode_steps + DECODE_WARMUP_STEPS
        spec = model.decoding_spec(GenerationSettings(max_new_tokens=steps + 1, min_new_tokens=steps + 1))
        step_llm = model.decoding_llm(compiled)
        results = []
        for count in self.plan.decode_rows:
            batch = DecodeBatch(model.llm, spec, step_llm=step_llm)
            start = _synchronized(self.plan.device)
            batch.join(model.prompt_prefix(visual[None].expand(count, -1, -1), task), [model.task_ids(task)],
                       list(range(count)))
            for _ in range(DECODE_WARMUP_STEPS):
                batch.step()
            first = _synchronized(self.plan.device) - start
            start = _synchronized(self.plan.device)
            for _ in range(self.plan.decode_steps):
                batch.step()
            seconds = _synchronized(self.plan.device) - start
            results.append({"rows": count, "ms_per_step": 1000 * seconds / self.plan.decode_steps,
                            "tokens_per_s": count * self.plan.decode_steps / seconds,
                            "prefill_and_warmup_seconds": first, "kv_length": int(batch.attention.shape[1])})
            del batch
            if self.plan.device == "cuda":
                torch.cuda.empty_cache()
        return results

    def per_image(self) -> dict:
        """The dataset through `describe`, image by image, stopped after the image that passes --per-image-seconds
        or what is left of --budget-seconds once the decode sections' share is kept (its regions/s is a rate, and
        the images it did are recorded)."""
        pam, items = self.pam(), self.items()
        reserve = DECODE_RESERVE_S if {"decode", "compiled", "compiled_stream"} & set(self.plan.sections) else 0.0
        left = self.plan.budget_seconds - (time.perf_counter() - self.started) - BUDGET_MARGIN_S - reserve
        limit = max(MIN_PER_IMAGE_S, min(self.plan.per_image_seconds, left))
        self.measured["per_image"] = self._timed(dataset.per_image, pam, items, self.plan.task, self.settings(),
                                                 limit)
        return {"model": self.model, "time_limit_s": limit, **_numbers(self.measured["per_image"])}

    def comparison(self) -> Optional[dict]:
        """Streaming (eager, and with the compiled decoder once measured) against the per-image path, with the
        issue's GPU targets on a GPU."""
        if not {"stream", "per_image"} <= set(self.measured):
            return None
        result = self._against_per_image(self.measured["stream"])
        if "compiled_stream" in self.measured:
            result["compiled"] = self._against_per_image(self.measured["compiled_stream"])
        return result

    def _against_per_image(self, streamed: dict) -> dict:
        looped = self.measured["per_image"]
        speedup = streamed["regions_per_s"] / looped["regions_per_s"]
        result = {"speedup": speedup, "outputs": dataset.agreement(looped, streamed)}
        if self.plan.device == "cuda":
            result["targets"] = {
                "regions_per_s": {"target": STREAM_TARGET_REGIONS_PER_S,
                                  "met": streamed["regions_per_s"] >= STREAM_TARGET_REGIONS_PER_S},
                "speedup": {"target": STREAM_TARGET_SPEEDUP, "met": speedup >= STREAM_TARGET_SPEEDUP}}
        return result

    def pam(self):
        """The real-size model (in smoke mode a tiny random one), made and warmed up on first use."""
        if self._pam is not None:
            return self._pam
        from pam_core import PAM

        start = time.perf_counter()
        workdir = Path(self.plan.workdir)
        if self.plan.cpu_smoke:
            from pam_core.synthetic import write_random_checkpoint, write_random_sam2

            sam2 = write_random_sam2(workdir / "smoke" / "sam2")
            checkpoint = write_random_checkpoint(workdir / "smoke" / "pam")
        else:
            checkpoint, sam2 = batching.prepare(workdir)
        self.model["checkpoint"] = str(checkpoint)
        self.model["checkpoint_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        # no feature cache: the per-image and streaming sections describe the same images, and neither may be
        # spared an encoder pass by the other
        pam = PAM.from_pretrained(checkpoint, sam2=sam2, device=self.plan.device, dtype=self.plan.dtype,
                                  local_files_only=True, cache_size=0)
        self.model["load_seconds"] = time.perf_counter() - start
        self.model["weights_gpu_gb"] = _gpu_gb(self.plan.device, allocated=True)
        start = time.perf_counter()
        count = self.plan.warmup_images  # a full encoder batch on a GPU
        warm = dataset.dataset_items(self._images(self.plan.images + count)[-count:], self.plan.image_regions)
        dataset.per_image(pam, warm[:2], self.plan.task, self.settings())
        dataset.streamed(pam, warm, self.plan.task, self.settings())
        self.model["warmup_seconds"] = time.perf_counter() - start
        self._pam = pam
        return pam

    def settings(self):
        from pam_core import GenerationSettings

        return GenerationSettings(max_new_tokens=self.plan.new_tokens, min_new_tokens=self.plan.new_tokens)

    def items(self) -> list:
        return dataset.dataset_items(self._images(self.plan.images), self.plan.image_regions)

    def _images(self, count: int) -> list[Path]:
        return dataset.dataset_images(Path(self.plan.workdir) / "images", count)

    def _timed(self, run: Callable[..., dict], *args) -> dict:
        """`run(*args)`, measured with its peak GPU memory."""
        if self.plan.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        measured = run(*args)
        measured["peak_gpu_gb"] = _gpu_gb(self.plan.device)
        return measured


def _gpu_gb(device: str, allocated: bool = False) -> Optional[float]:
    """Peak (or, with `allocated`, current) GPU memory allocated by PyTorch, in GiB; None on a CPU."""
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    return (torch.cuda.memory_allocated() if allocated else torch.cuda.max_memory_allocated()) / 2**30


def _synchronized(device: str) -> float:
    """perf_counter() once the device has finished what was queued."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _numbers(measured: dict) -> dict:
    """The numbers of a run, without its token ids and mask digests."""
    return {k: v for k, v in measured.items() if k not in ("outputs", "masks")}


# --- report --------------------------------------------------------------------------------------------------------

def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def _gb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _run_row(name: str, m: dict) -> str:
    return (f"  {name:<22}{m['images']:>7}{m['regions']:>8}{m['seconds']:>8.2f}{m['regions_per_s']:>11.1f}"
            f"{m['tokens_per_s']:>10.0f}{_gb(m['peak_gpu_gb']):>13}")


def table(report: dict) -> str:
    """The report as a few lines and one table of runs."""
    settings = report["settings"]
    lines = [f"GPU check: {settings['device']}, {settings['dtype']} at "
             f"{'tiny size (CPU smoke)' if settings['cpu_smoke'] else 'real size'}, {settings['new_tokens']} tokens "
             f"per text, task {settings['task']}, {report['seconds']:.0f} s in all"]
    env = report.get("environment")
    if env:
        lines.append(f"  python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
                     f"{env.get('gpu', 'no GPU')}")
    for row in report.get("parity") or []:
        status = "PASS" if row["exit_status"] == 0 and not row["error"] else "FAIL"
        lines.append(f"parity {row['fixture']} on {row['device']}: {row['passed']} passed, {row['failed']} failed, "
                     f"{row['not_supported']} not supported ({row['seconds']:.0f} s)  {status}")
    b = report.get("bf16")
    if b:
        lines.append(f"bf16 vs float32 ({b['fixture']}, {b['regions']} regions x {len(b['tasks'])} tasks): token "
                     f"agreement {b['token_agreement']:.3f}, identical texts {b['identical_texts']}/{b['texts']}, "
                     f"mask IoU mean {b['mask_iou_mean']:.4f}, min {b['mask_iou_min']:.4f}")
    runs = [(f"{row['regions']} region{'s' if row['regions'] > 1 else ''} of 1 image", row)
            for row in (report.get("regions") or {}).get("rows", [])]
    runs += [(name, report[key]) for name, key in (("stream", "stream"), ("per-image", "per_image"),
                                                    ("stream, compiled", "compiled_stream"))
             if report.get(key) and "skipped" not in report[key]]
    if runs:
        model = runs[0][1].get("model") or (report.get("regions") or {}).get("model", {})
        if model:
            gpu = "" if model["weights_gpu_gb"] is None else f", weights on the GPU {model['weights_gpu_gb']:.2f} GB"
            lines.append(f"model {model['checkpoint']}: written in {model['checkpoint_seconds']:.0f} s, loaded in "
                         f"{model['load_seconds']:.0f} s, warm-up {model['warmup_seconds']:.0f} s{gpu}")
        lines.append(f"  {'run':<22}{'images':>7}{'regions':>8}{'wall s':>8}{'regions/s':>11}{'tokens/s':>10}"
                     f"{'peak GPU GB':>13}")
        lines += [_run_row(name, m) for name, m in runs]
    lines += _decode_lines(report.get("decode"), report.get("compiled"))
    c = report.get("comparison")
    if c:
        lines += _comparison_lines("streaming", c, report["stream"])
        if "compiled" in c:
            lines += _comparison_lines("compiled streaming", c["compiled"], report["compiled_stream"])
    for section, error in report["errors"].items():
        lines.append(f"ERROR in {section}: {error.strip().splitlines()[-1]}")
    return "\n".join(lines)


def _comparison_lines(name: str, c: dict, streamed: dict) -> list[str]:
    """A stream against the per-image path: the ratio and rate against the GPU targets, and the token ids."""
    line = f"{name} / per-image regions/s: {c['speedup']:.2f}x"
    if "targets" in c:
        speed, rate = c["targets"]["speedup"], c["targets"]["regions_per_s"]
        line += (f" (target >= {speed['target']:g}x: {'met' if speed['met'] else 'NOT met'}); "
                 f"{streamed['regions_per_s']:.1f} regions/s (target >= {rate['target']:g}: "
                 f"{'met' if rate['met'] else 'NOT met'})")
    o = c["outputs"]
    return [line, f"token ids per-image = {name}: {o['identical_texts']}/{o['texts']} texts; masks "
                  f"{o['identical_masks']}/{o['masks']}"]


def _decode_lines(decode: Optional[dict], compiled: Optional[dict]) -> list[str]:
    """The decode sections as lines: the compiled decoder's float32 identity, then step times per row count."""
    lines = []
    if compiled and "skipped" in compiled:
        lines.append(f"compiled decoder skipped: {compiled['skipped']}")
    elif compiled:
        i = compiled["identity"]
        lines.append(f"compiled decoder vs eager, float32 on {i['fixture']}: identical token ids "
                     f"{i['identical_texts']}/{i['texts']} texts (first compiled call {i['first_call_seconds']:.0f} s)")
    eager = (decode or {}).get("steps") or []
    fast = {row["rows"]: row for row in (compiled or {}).get("steps") or []}
    if eager:
        lines.append(f"  {'decoding step':<22}{'KV length':>10}{'eager ms':>10}{'compiled ms':>13}{'speedup':>9}")
    for row in eager:
        other = fast.get(row["rows"])
        lines.append(f"  {row['rows']:>4} row{'s' if row['rows'] > 1 else ' '}{'':<14}{row['kv_length']:>10}"
                     f"{row['ms_per_step']:>10.1f}{other['ms_per_step'] if other else float('nan'):>13.1f}"
                     f"{row['ms_per_step'] / other['ms_per_step'] if other else float('nan'):>8.2f}x")
    return lines


def _counts(parser: argparse.ArgumentParser, flag: str, given: Optional[str], default: str) -> list[int]:
    """A comma-separated list of counts (`default` when not given); a malformed one is the parser's error."""
    try:
        return [int(n) for n in (given or default).split(",")]
    except ValueError:
        parser.error(f"{flag} takes counts like {default}, got {given!r}")


def plan_from_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", default=bool(os.environ.get("PAM_GPU_CHECK_CPU_SMOKE")),
                        help="every section on the CPU at tiny size (also: PAM_GPU_CHECK_CPU_SMOKE=1)")
    parser.add_argument("--out", default=os.environ.get("OUT") or ".",
                        help="folder for gpu-check.json and gpu-check.txt (default: $OUT, else the current folder)")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/pam-suite-bench"),
                        help="real-size checkpoint (about 4 GB, written once) and images (default: %(default)s)")
    parser.add_argument("--fixtures", default=None,
                        help="folder of parity fixtures (default: ../shared/fixtures, else the carried pack)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which to run (default: %(default)s)")
    parser.add_argument("--regions", default=None, help="regions of one image, comma-separated (1,8,64; smoke 1,3)")
    parser.add_argument("--images", type=int, default=None, help="images of the stream (200; smoke 4)")
    parser.add_argument("--image-regions", type=int, default=3, help="regions per image of the stream (3)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens of every text (16; smoke 4)")
    parser.add_argument("--task", default="category")
    parser.add_argument("--decode-rows", default=None, help="rows of the decode section, comma-separated (1,16,64; "
                                                           "smoke 1,3)")
    parser.add_argument("--decode-steps", type=int, default=None, help="timed decoding steps per row count (16; "
                                                                       "smoke 3)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per regions row, the best kept (2; smoke 1)")
    parser.add_argument("--per-image-seconds", type=float, default=150.0,
                        help="the per-image path stops after the image that passes this time (default: %(default)s)")
    parser.add_argument("--budget-seconds", type=float, default=450.0,
                        help="the per-image path also stops in time for the whole run to end by then "
                             "(default: %(default)s)")
    parser.add_argument("--parity-case", action="append", default=None, dest="parity_cases",
                        help="only this case of each fixture (repeatable; default: all, smoke: image_box)")
    parser.add_argument("--pack-fixtures", nargs=2, metavar=("FIXTURES", "PACK"), default=None,
                        help="(gpu_check.sh --prepare) pack a fixtures folder to carry to the GPU machine")
    plan = parser.parse_args(argv)
    smoke = plan.cpu_smoke
    plan.device, plan.dtype = ("cpu", "float32") if smoke else ("cuda", "bfloat16")
    plan.regions = _counts(parser, "--regions", plan.regions, "1,3" if smoke else "1,8,64")
    plan.decode_rows = _counts(parser, "--decode-rows", plan.decode_rows, "1,3" if smoke else "1,16,64")
    plan.decode_steps = plan.decode_steps or (3 if smoke else 16)
    plan.images = plan.images or (4 if smoke else 200)
    plan.new_tokens = plan.new_tokens or (4 if smoke else 16)
    plan.repeats = plan.repeats or (1 if smoke else 2)
    plan.parity_cases = plan.parity_cases or (["image_box"] if smoke else [])
    plan.bf16_regions, plan.warmup_images = (4, 2) if smoke else (16, 8)
    plan.sections = [s for s in plan.sections.split(",") if s]
    unknown = sorted(set(plan.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    if min(plan.regions + plan.decode_rows) < 1 or min(plan.images, plan.image_regions, plan.new_tokens,
                                                         plan.decode_steps) < 1:
        parser.error("--regions, --decode-rows, --images, --image-regions, --new-tokens and --decode-steps must be "
                     ">= 1")
    return plan


def main(argv: Optional[list[str]] = None) -> int:
    plan = plan_from_args(argv)
    if plan.pack_fixtures:
        pack_fixtures(Path(plan.pack_fixtures[0]), Path(plan.pack_fixtures[1]))
        return 0
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch

    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --cpu-smoke for the CPU smoke test", file=sys.stderr)
        return 2
    out = Path(plan.out)
    check = GpuCheck(plan)
    report = {"settings": {k: v for k, v in vars(plan).items() if k != "pack_fixtures"}, "seconds": 0.0,
              "errors": {}, **{section: None for section in SECTIONS}, "comparison": None}
    for section in plan.sections:
        print(f"[{time.perf_counter() - check.started:5.0f} s] {section} ...", flush=True)
        try:
            report[section] = getattr(check, section)()
        except Exception:  # one section's failure must not cost the others their measurement
            report["errors"][section] = traceback.format_exc()
            print(report["errors"][section], file=sys.stderr, flush=True)
        report["comparison"] = check.comparison()
        report["seconds"] = time.perf_counter() - check.started
        _write_json(out / "gpu-check.json", report)
    text = table(report)
    (out / "gpu-check.txt").write_text(text + "\n")
    print("\n" + text + f"\nJSON: {out / 'gpu-check.json'}")
    parity_failed = any(row["exit_status"] != 0 or row["error"] for row in report["parity"] or [])
    return 1 if report["errors"] or parity_failed else 0


if __name__ == "__main__":
    sys.exit(main())
