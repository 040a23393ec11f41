"""Finding PAM, SAM 2 and SAM 3 checkpoints (local folder or Hugging Face Hub) and reading their weights safely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

from .config import PAMConfig
from .errors import CheckpointError, WeightsNotFoundError

# The one table of Hub ids. PAM: the released checkpoints (the first is the default). SAM 2.1: sam2's own
# table of Hub repos, as (weights file, config name) for the SAM 2.1 repos PAM can run on.
PAM_MODELS = ("Perceive-Anything/PAM-1.5B", "Perceive-Anything/PAM-3B")
DEFAULT_MODEL = PAM_MODELS[0]
SAM2_HUB_FILES = {repo: (weights, Path(config).name) for repo, (config, weights) in HF_MODEL_ID_TO_FILENAMES.items()
                  if repo.startswith("facebook/sam2.1-")}
DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"
# SAM 3 (concept prompts, pam_core.concepts): transformers-format repos, gated under the SAM License. The
# transformers files only: the repo also holds Meta's original sam3.pt (3.4 GB), which transformers does not read.
SAM3_MODELS = ("facebook/sam3",)
DEFAULT_SAM3 = SAM3_MODELS[0]
SAM3_HUB_FILES = ["*.json", "*.txt", "model*.safetensors"]
PAM_REQUIRED_FILES = ("config.json", "tokenizer.json")
PAM_KEY_PREFIXES = ("model.vision_resampler.", "model.mm_projector_img.", "model.mm_projector_semT.",
                    "model.image_newline", "model.semT_newline", "model.frame_newline")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_snapshot(repo_id: str, allow_patterns: list[str], local_files_only: bool, what: str, hint: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=local_files_only))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, HfHubHTTPError, ValueError) as exc:
        why = ("downloads are disabled (HF_HUB_OFFLINE=1 or a host's no-download setting)" if local_files_only
               else f"the download failed ({exc.__class__.__name__})")
        raise WeightsNotFoundError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and {why}. {hint}"
        ) from exc


def resolve_model_dir(model: str | os.PathLike, local_files_only: Optional[bool] = None) -> Path:
    """A folder with an official-layout PAM checkpoint, from a local path or a Hub id.

    Hub ids: "Perceive-Anything/PAM-1.5B" (its weights sit in the subfolder of the same name) or
    "owner/repo/subfolder". Downloads only when allowed (`local_files_only` False, or None and not
    HF_HUB_OFFLINE).
    """
    path = Path(model).expanduser()
    if path.exists():
        return _checked_model_dir(path)
    ref = str(model)
    if not _hub_id(ref):
        raise WeightsNotFoundError(f"PAM checkpoint folder not found: {ref}")
    parts = ref.split("/")
    repo_id = "/".join(parts[:2])
    subfolder = parts[2] if len(parts) == 3 else parts[1]
    if local_files_only is None:
        local_files_only = offline()
    hint = (f"Download it where the Hub is reachable with `hf download {repo_id} --include '{subfolder}/*' "
            f"--local-dir PAM` and pass --model PAM/{subfolder} (or copy it into the Hugging Face cache).")
    root = _hub_snapshot(repo_id, [f"{subfolder}/*"], local_files_only, "PAM checkpoint", hint)
    folder = root / subfolder
    if not folder.is_dir():
        raise WeightsNotFoundError(f"PAM checkpoint {repo_id!r} has no subfolder {subfolder!r}. {hint}")
    return _checked_model_dir(folder)


def _hub_id(ref: str, subfolder: bool = True) -> bool:
    """Whether a reference that is no local path reads as a Hub id: "owner/repo", or with `subfolder`
    "owner/repo/subfolder" too."""
    parts = ref.split("/")
    return len(parts) in ((2, 3) if subfolder else (2,)) and all(parts) and not ref.startswith((".", "/", "~"))


def check_local_weights(model: str, sam2: Optional[str], sam2_config: Optional[str] = None,
                        sam3: Optional[str] = None) -> None:
    """Raises now, without loading anything, the error loading would give for a PAM folder, SAM 2 file or SAM 3
    folder named by a local path that is missing or incomplete. Hub ids are left to the loader: they may be in the
    cache of the machine that loads them."""
    if Path(model).expanduser().exists() or not _hub_id(model):
        resolve_model_dir(model, local_files_only=True)
    if (sam2 or DEFAULT_SAM2) not in SAM2_HUB_FILES:
        resolve_sam2(sam2, sam2_config, local_files_only=True)
    if sam3 is not None and (Path(sam3).expanduser().exists() or not _hub_id(sam3, subfolder=False)):
        resolve_sam3_dir(sam3, local_files_only=True)


def _checked_model_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"PAM checkpoint must be a folder (config.json, tokenizer, *.safetensors), "
                              f"got file {path}")
    missing = [name for name in PAM_REQUIRED_FILES if not (path / name).is_file()]
    if not weight_files(path):
        missing.append("model.safetensors (or model.safetensors.index.json + shards)")
    if missing:
        raise CheckpointError(f"PAM checkpoint {path} is missing {', '.join(missing)}")
    return path


def resolve_sam3_dir(sam3: str | os.PathLike = DEFAULT_SAM3, local_files_only: Optional[bool] = None) -> Path:
    """A folder with a transformers-format SAM 3 (config, weights, processor and tokenizer files), from a local
    path or a Hub id ("facebook/sam3"). Downloads only when allowed (as `resolve_model_dir`); the Hub repo is
    gated, so a failed or disallowed download says to accept the licence first."""
    path = Path(sam3).expanduser()
    if path.exists():
        return _checked_sam3_dir(path)
    ref = str(sam3)
    if not _hub_id(ref, subfolder=False):
        raise WeightsNotFoundError(f"SAM 3 folder not found: {ref} (give a folder or a Hub id such as {DEFAULT_SAM3})")
    if local_files_only is None:
        local_files_only = offline()
    hint = (f"SAM 3 is gated: accept the SAM License at https://huggingface.co/{ref} (logged in with `hf auth login`), "
            f"then download it where the Hub is reachable with `hf download {ref} --exclude '*.pt' --local-dir sam3` "
            f"and pass --sam3 sam3 (or leave it in the Hugging Face cache).")
    return _checked_sam3_dir(_hub_snapshot(ref, SAM3_HUB_FILES, local_files_only, "SAM 3 checkpoint", hint))


def _checked_sam3_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"SAM 3 checkpoint must be a folder (config.json, model.safetensors, processor and "
                              f"tokenizer files), got file {path}")
    has = lambda *names: any((path / name).is_file() for name in names)  # noqa: E731
    missing = [] if has("config.json") else ["config.json"]
    if not has("model.safetensors", "model.safetensors.index.json"):
        missing.append("model.safetensors (or model.safetensors.index.json + shards)")
    if not has("processor_config.json", "preprocessor_config.json"):
        missing.append("processor_config.json (or preprocessor_config.json)")
    if not has("tokenizer.json") and not (has("vocab.json") and has("merges.txt")):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise CheckpointError(f"SAM 3 checkpoint {path} is missing {', '.join(missing)}")
    return path


def read_config(path: Path) -> PAMConfig:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc
    return PAMConfig.from_dict(data, source=str(path / "config.json"))


def read_generation_defaults(path: Path) -> dict:
    """The checkpoint's generation_config.json (Qwen2.5-Instruct's sampling defaults in the release)."""
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from exc


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards listed in the index, or model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"cannot read {index}: {exc}") from exc
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"PAM checkpoint {path} is missing shards {', '.join(missing)} "
                                  f"listed in {index.name}")
        return [path / s for s in shards]
    single = path / "model.safetensors"
    return [single] if single.is_file() else []


def read_pam_weights(path: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The Perceiver, projector and newline tensors (the LLM's load through transformers), as `dtype`."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(PAM_KEY_PREFIXES):
                        state[key[len("model."):]] = handle.get_tensor(key).to(dtype)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read weights {file}: {exc}") from exc
    return state


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """How `given` fails to fit a module whose state dict is `expected` ("" when it fits exactly)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [k for k in expected if k in given and expected[k].shape != given[k].shape]
    kinds = (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
    problems = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in kinds if keys]
    return ", ".join(problems)


def resolve_sam2(sam2: str | os.PathLike | None, config: str | os.PathLike | None = None,
                 local_files_only: Optional[bool] = None) -> tuple[Path, Path]:
    """(weights file, yaml config) for SAM 2.

    `sam2` is a `.pt`/`.safetensors` file or a Hub id (default facebook/sam2.1-hiera-large). The config is
    `config` (a yaml path or a sam2 package config name such as "sam2.1_hiera_l"), else a yaml with the
    weights' name beside them, else the package config that pairs with the Hub repo or with the released file
    of the same name (e.g. sam2.1_hiera_small.pt), else Hiera-L's.
    """
    ref = str(sam2) if sam2 is not None else DEFAULT_SAM2
    path = Path(ref).expanduser()
    default_config = SAM2_HUB_FILES[DEFAULT_SAM2][1]
    if path.is_file():
        weights = path
        sibling = path.with_suffix(".yaml")
        released = (name for filename, name in SAM2_HUB_FILES.values() if Path(filename).stem == path.stem)
        default_config = str(sibling) if sibling.is_file() else next(released, default_config)
    elif ref in SAM2_HUB_FILES:
        filename, default_config = SAM2_HUB_FILES[ref]
        if local_files_only is None:
            local_files_only = offline()
        hint = (f"Download {filename} where the Hub is reachable (`hf download {ref} {filename} --local-dir SAM2`) "
                f"and pass --sam2 SAM2/{filename}.")
        weights = _hub_snapshot(ref, [filename], local_files_only, "SAM 2 checkpoint", hint) / filename
    else:
        raise WeightsNotFoundError(
            f"SAM 2 weights not found: {ref} (give a sam2.1_hiera_*.pt / .safetensors file or one of "
            f"{', '.join(SAM2_HUB_FILES)})")
    return weights, sam2_config_path(config if config is not None else default_config)


def sam2_config_path(config: str | os.PathLike) -> Path:
    path = Path(config).expanduser()
    if path.is_file():
        return path
    import sam2

    name = Path(str(config)).name
    name = name if name.endswith(".yaml") else name + ".yaml"
    packaged = Path(sam2.__file__).parent / "configs" / "sam2.1" / name
    if packaged.is_file():
        return packaged
    raise CheckpointError(f"SAM 2 config not found: {config} (a yaml file or e.g. sam2.1_hiera_l)")


def read_sam2_weights(path: Path) -> dict[str, torch.Tensor]:
    """Meta's `{"model": state_dict}` .pt (loaded with weights_only=True) or a safetensors file, as float32."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                state = {k: handle.get_tensor(k) for k in handle.keys()}
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} is not a SAM 2 checkpoint (expected a dict with a 'model' state dict)")
    except CheckpointError:
        raise
    except Exception as exc:  # torch.load / safetensors raise many types for corrupt or foreign files
        raise CheckpointError(f"cannot read SAM 2 weights {path}: {exc}") from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
