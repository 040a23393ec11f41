"""A real ComfyUI 0.3.75 for the node-pack tests: where scripts/test-setup/comfyui.sh put it, a base directory
holding the pack and the fixture checkpoint, the server on a free port, and example workflows as API prompts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE, free_port

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "comfyui"
COMFY_DIR = BUILD / "ComfyUI"
LATEST_FRONTEND = BUILD / "frontend-latest" / "comfyui_frontend_package" / "static"
NODE_MODULES = BUILD / "node_modules"
ARTIFACTS = REPO / "test-artifacts" / "comfyui"
EXAMPLES = REPO / "example_workflows"
EXAMPLE_IMAGE = "pam_example.png"  # the names the example workflows load from ComfyUI's input folder
EXAMPLE_VIDEO = "pam_example.mp4"  # the fixture's first VIDEO_FRAMES video frames at VIDEO_FPS
LONG_VIDEO = "pam_long.mp4"  # all 20 of them (long enough to cancel a run halfway)
VIDEO_FRAMES, VIDEO_FPS = 5, 10
PACK_NAME = "pam-suite"
CHECKPOINT_NAME = "pam_tiny"
EXTRA_CHECKPOINT_NAME = "PAM-tiny/pam_tiny"
SAM2_NAME = "sam2.1_hiera_pamtiny.pt"

needs_comfyui = pytest.mark.skipif(
    not (COMFY_DIR / "main.py").is_file() or not FIXTURE.is_dir(),
    reason="ComfyUI (bash scripts/test-setup/comfyui.sh) or the golden fixture is missing")


def make_base(root: Path, vue_nodes: bool = False) -> Path:
    """A ComfyUI base directory: this repository as a custom node pack, the fixture checkpoint in
    models/pam (and once more through extra_model_paths.yaml), its SAM 2 weights in models/sam2, the fixture
    image and the fixture video (as mp4s) in input/, and UI settings that skip the first-run templates dialog
    and pick the node renderer (LiteGraph canvas, or the Vue "Nodes 2.0" of newer frontends)."""
    (root / "custom_nodes").mkdir(parents=True)
    (root / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    (root / "models" / "pam").mkdir(parents=True)
    (root / "models" / "pam" / CHECKPOINT_NAME).symlink_to(FIXTURE / "checkpoint", target_is_directory=True)
    (root / "models" / "sam2").mkdir(parents=True)
    for name in (SAM2_NAME, Path(SAM2_NAME).with_suffix(".yaml").name):
        (root / "models" / "sam2" / name).symlink_to(FIXTURE / "sam2" / name)
    # a second checkpoint in a Hub-layout folder (repo folder / checkpoint folder) that only
    # extra_model_paths.yaml names
    nested = root / "shared_models" / "pam" / EXTRA_CHECKPOINT_NAME
    nested.parent.mkdir(parents=True)
    nested.symlink_to(FIXTURE / "checkpoint", target_is_directory=True)
    (root / "extra_model_paths.yaml").write_text("shared:\n  base_path: shared_models\n  pam: pam\n")
    (root / "input").mkdir()
    shutil.copy(FIXTURE / "inputs" / "image.png", root / "input" / EXAMPLE_IMAGE)
    frames = sorted((FIXTURE / "inputs" / "video").glob("*.jpg"))
    write_mp4(root / "input" / EXAMPLE_VIDEO, frames[:VIDEO_FRAMES], VIDEO_FPS)
    write_mp4(root / "input" / LONG_VIDEO, frames, VIDEO_FPS)
    settings = root / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": vue_nodes}))
    return root


def write_mp4(path: Path, frames: list[Path], fps: int) -> None:
    """H.264 mp4 of image files (what Load Video reads and browsers play)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = Image.open(frames[0]).size
        for file in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(file).convert("RGB")), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def comfy_args(base: Path) -> list[str]:
    return ["--cpu", "--base-directory", str(base), "--disable-api-nodes",
            "--extra-model-paths-config", str(base / "extra_model_paths.yaml")]


def is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    return (isinstance(kind, list) or kind in ("COMBO", "INT", "FLOAT", "STRING", "BOOLEAN")) \
        and not options.get("forceInput")


def workflow_to_prompt(workflow: dict, input_types) -> dict:
    """A UI-format workflow (what example_workflows/ holds and the editor saves) as an API prompt, the way
    the frontend's graphToPrompt() builds it: widget values in input order, links as [node id, slot].
    `input_types(class_type)` returns the node's {"required": {...}, "optional": {...}} specs, or None for
    frontend-only nodes (notes)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        types = input_types(node["type"])
        if types is None or node.get("mode", 0) != 0:
            continue
        specs = {**types.get("required", {}), **types.get("optional", {})}
        widgets = [name for name, spec in specs.items() if is_widget(spec)]
        values = node.get("widgets_values") or []
        assert not any((spec[1] or {}).get("control_after_generate") for spec in specs.values() if len(spec) > 1), \
            "seed widgets carry an extra value this converter does not handle"
        inputs = dict(zip(widgets, values))
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


@contextlib.contextmanager
def comfy_server(base: Path, log: Path, front_end_root: Path | None = None):
    """`python main.py` on 127.0.0.1 and a free port; yields its URL; stopped (and waited for) on exit."""
    port = free_port()
    args = [sys.executable, "main.py", *comfy_args(base), "--listen", "127.0.0.1", "--port", str(port)]
    if front_end_root is not None:
        args += ["--front-end-root", str(front_end_root)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "wb") as out:
        server = subprocess.Popen(args, cwd=COMFY_DIR, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited with {server.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"{url}/system_stats", timeout=5):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ComfyUI did not answer in 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post_json(url: str, data) -> dict:
    request = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# The fixture's random-weight SAM 2 finds no object at SAM 2's real thresholds, and a 16 x 16 point grid
# takes minutes on a shared 2-core CPU: Describe Everything runs with a 4 x 4 grid and open thresholds.
FIXTURE_AUTOMASK = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0,
                        max_regions=3)


def use_fixture_model(prompt: dict, max_new_tokens: int) -> dict:
    """The prompt with every PAM loader set to the fixture checkpoint, every PAM text node limited to
    `max_new_tokens` (the fixture model writes gibberish; short keeps the tests fast) and Describe
    Everything set to FIXTURE_AUTOMASK."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "PAMModelLoader":
            inputs.update(model=CHECKPOINT_NAME, sam2=SAM2_NAME)
        if node["class_type"] == "PAMDescribeEverything":
            inputs.update(FIXTURE_AUTOMASK)
        if node["class_type"].startswith("PAM") and "max_new_tokens" in inputs:
            inputs["max_new_tokens"] = max_new_tokens
    return prompt
