"""Hugging Face model ids (``org/name``) as inputs, besides files and folders.

``resolve_model("HuggingFaceTB/SmolLM2-135M")`` returns the snapshot folder of that model in the
local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``). With ``HF_HUB_OFFLINE=1`` only the cache is used; otherwise a
model missing from the cache is downloaded with ``huggingface_hub`` (weights as safetensors or
GGUF, configs and tokenizers only — pickled weights are never fetched).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kexue.utils import KexueError, require

_FILE_SUFFIXES = (".npy", ".npz", ".safetensors", ".gguf", ".onnx", ".h5", ".hdf5", ".bin", ".pt", ".json")
_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# what an output-layer audit or a sentence encoder reads; never *.bin / *.pt (pickles)
PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.gguf", "*.json", "*.txt", "*.model", "*.py", "1_Pooling/*",
            "2_Normalize/*", "modules.json"]


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_model_id(name: str) -> bool:
    """``org/name`` with no local file or folder of that name."""
    return bool(_ID.fullmatch(str(name))) and not Path(name).expanduser().exists()


def resolve_model(name_or_path, *, revision: str | None = None, patterns=PATTERNS) -> Path:
    """A local path unchanged (as a Path); a model id → its snapshot folder (see module doc).

    Raises KexueError naming the fix: a path that does not exist, an id not in the cache while
    offline, or an id the hub does not know."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.exists() or not _ID.fullmatch(s) or p.suffix.lower() in _FILE_SUFFIXES:
        return p
    snapshot_download = require("lm", "huggingface_hub", f"fetching {s} from the Hugging Face hub").snapshot_download
    LocalEntryNotFoundError = require("lm", "huggingface_hub.errors").LocalEntryNotFoundError

    try:
        return Path(snapshot_download(s, revision=revision, cache_dir=str(hub_cache()), local_files_only=offline(),
                                      allow_patterns=list(patterns)))
    except LocalEntryNotFoundError:
        raise KexueError(f"{s} is neither a local path nor a model in the Hugging Face cache {hub_cache()}"
                         + (" (HF_HUB_OFFLINE is set: download it elsewhere, or unset it)" if offline()
                            else "; check the id and your network")) from None
    except Exception as e:  # repository not found, gated, HTTP errors
        raise KexueError(f"cannot fetch {s} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0]})") from None
