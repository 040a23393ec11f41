"""Remote FiftyOne model zoo source for PAM: `foz.register_zoo_model_source(<repository url>)`, then
`foz.load_zoo_model("pam-suite/pam-1.5b", tasks=("category", "detailed"))` (add `media_type="video"` for video
datasets).

A downloaded model folder holds the PAM checkpoint (`PAM-1.5B/` or `PAM-3B/`, as on the Hub) and SAM 2.1
Hiera-L (`sam2.1_hiera_large.pt`). `pam-suite/region-text-embedder` is the text model of PAM's semantic search
index: it downloads nothing (its sentence model comes from a package, a folder or the Hugging Face cache).
"""

from pathlib import Path

from fiftyone_plugin.model import PAMRegionModel
from fiftyone_plugin.similarity import TEXT_MODEL, RegionTextModel
from pam_core.checkpoint import DEFAULT_SAM2, PAM_MODELS, SAM2_HUB_FILES
from pam_core.errors import WeightsNotFoundError

# Zoo names (manifest.json's base_filename) are the Hub repos' names in lower case: pam-1.5b, pam-3b.
HUB_REPOS = {repo.split("/")[1].lower(): repo for repo in PAM_MODELS}
SAM2_FILE = SAM2_HUB_FILES[DEFAULT_SAM2][0]


def _hub_repo(model_name: str) -> str:
    name = model_name.rsplit("/", 1)[-1]
    if name not in HUB_REPOS:
        raise WeightsNotFoundError(f"unknown PAM zoo model {model_name!r}; use one of "
                                   f"{', '.join('pam-suite/' + key for key in HUB_REPOS)}")
    return HUB_REPOS[name]


def download_model(model_name, model_path):
    """PAM and SAM 2.1 Hiera-L from the Hugging Face Hub into `model_path` (fails clearly when offline)."""
    if model_name == TEXT_MODEL:  # nothing to fetch: the zoo only needs its folder to exist
        Path(model_path).mkdir(parents=True, exist_ok=True)
        return
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = _hub_repo(model_name)
    subfolder = repo.split("/")[1]
    try:
        snapshot_download(repo, allow_patterns=[f"{subfolder}/*"], local_dir=model_path)
        hf_hub_download(DEFAULT_SAM2, SAM2_FILE, local_dir=model_path)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise WeightsNotFoundError(
            f"cannot download {repo} and {DEFAULT_SAM2}/{SAM2_FILE} into {model_path} ({exc.__class__.__name__}: "
            f"{exc}). Where the Hub is reachable run `hf download {repo} --include '{subfolder}/*' --local-dir "
            f"{model_path}` and `hf download {DEFAULT_SAM2} {SAM2_FILE} --local-dir {model_path}`.") from exc


def load_model(model_name, model_path, **kwargs):
    """A `PAMRegionModel` on the downloaded weights; kwargs: tasks, lang, max_regions, max_new_tokens, device, dtype,
    and media_type="video" with prompt_frame, window, segments, carry for video datasets.
    The text model: a `RegionTextModel`; kwargs: model, text, device."""
    if model_name == TEXT_MODEL:
        return RegionTextModel(**kwargs)
    folder = Path(model_path)
    kwargs.setdefault("model", folder / _hub_repo(model_name).split("/")[1])
    kwargs.setdefault("sam2", folder / SAM2_FILE)
    kwargs.setdefault("local_files_only", True)
    return PAMRegionModel(**kwargs)
