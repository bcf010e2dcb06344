"""Weights: the registry, where a file comes from, its sha256, and loading the frozen networks (SPEC §1).

The only dsct module that downloads or reads environment variables. A file is found in this
order: an explicit path (``ModelConfig.unet_path`` / ``--unet-path`` …), its environment variable
(``DSCT_<NAME>_PATH``), then the Hugging Face cache, downloading into it unless offline. Each
network is loaded through its own library's mechanism: our UNet and ArcFace from the resolved
file, DINO through ``timm.create_model(pretrained=True)``, CLIP through ``open_clip.create_model``.
Reference: timm ``_hub.py`` / ``_builder.py`` (registry entry → ``hf_hub_download`` → safe load).

Environment variables read here (and nowhere else in dsct):
  DSCT_<NAME>_PATH  a local file for registry entry <name>: DSCT_ADM_IMAGENET256_PATH, DSCT_ADM_FFHQ256_PATH,
                    DSCT_ADM_IMAGENET512_PATH,
                    DSCT_DINO_VITB8_PATH, DSCT_CLIP_RN50_PATH (…_RN50X4, _VIT_B_32, _RN50X16, _VIT_B_16),
                    DSCT_ARCFACE_IR_SE50_PATH
  HF_HUB_OFFLINE    no downloads; also honoured when set after huggingface_hub was imported
  HF_HUB_ETAG_TIMEOUT  when set, the seconds the first request to the Hub may take (default 5 s here)
  XDG_CACHE_HOME    where sha256 verifications are remembered (default ~/.cache/dsct/verified)
huggingface_hub itself reads HF_HOME / HF_HUB_CACHE (the cache location) and HF_TOKEN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import huggingface_hub
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
import open_clip
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from torch import Tensor, nn

from .arcface import build_arcface
from .clip import OPENAI_MODELS, PRETRAINED_TAG, TINY_CONFIGS, ClipEnsemble, build_clip_models
from .config import ModelConfig
from .errors import ChecksumError, ConfigError, DSCTError, HubUnreachable, WeightsNotFound
from .unet import UNet, build_unet, checkpoint_filter_fn
from .vit import DINO_NAME, VIT_CONFIGS, DinoFeatures, build_vit

__all__ = [
    "WeightFile", "WEIGHTS", "UNET_WEIGHTS", "CLIP_WEIGHTS", "TINY_SEED", "Models",
    "DTYPES", "resolve", "load_state_dict", "verify_sha256", "compute_dtype",
    "load_unet", "load_vit", "load_clip_model", "load_arcface", "load_models", "download", "prefetch",
]

TINY_SEED = 0  # tiny random models: the same weights on every call
_CHUNK = 1 << 24  # bytes read per sha256 update
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_TIMEOUT_S = 5.0  # the one quick request that tells a reachable Hub from none (HF_HUB_ETAG_TIMEOUT overrides)


@dataclass(frozen=True)
class WeightFile:
    """One checkpoint file of the registry.

    ``size_bytes`` is for messages and the README, not checked: exact where known, else the
    float32 tensor bytes of the architecture (the file adds well under 1 % of framing).
    ``arch`` is what is built around the weights (a ``MODEL_CONFIGS`` / ``VIT_CONFIGS`` /
    ``build_arcface`` key; for CLIP an open_clip name or a ``clip.TINY_CONFIGS`` key), so a
    test can swap in a tiny architecture and keep the code path. ``hub_model`` names the
    timm/open_clip model whose own hub loading fetches the file (None: dsct fetches it).
    ``opt_in`` files are fetched only when named (``python -m dsct download --names …``), never by a
    bare ``download`` nor the Space's preload: no default configuration reads them and they are large.
    """

    name: str
    repo_id: str
    filename: str
    size_bytes: int
    sha256: str | None
    _: dataclasses.KW_ONLY
    licence: str
    source: str
    arch: str
    arg: str | None = None  # ModelConfig field (CLI flag: --kebab-case) that overrides the file
    hub_model: str | None = None
    opt_in: bool = False

    @property
    def env_var(self) -> str:
        """Environment variable holding a local path for this file, e.g. DSCT_ADM_IMAGENET256_PATH."""
        return f"DSCT_{self.name.upper()}_PATH"

    @property
    def flag(self) -> str | None:
        """CLI flag that overrides this file, e.g. --unet-path."""
        return None if self.arg is None else "--" + self.arg.replace("_", "-")

    @property
    def download_command(self) -> str:
        """The command that fetches this file: a bare ``download`` skips opt-in files."""
        return f"python -m dsct download{f' --names {self.name}' if self.opt_in else ''}"


def _clip(name: str, repo_id: str, size_bytes: int, model: str) -> WeightFile:
    """An OpenAI CLIP entry: the file open_clip itself fetches for ``create_model(model, pretrained="openai")``."""
    return WeightFile(
        name, repo_id, "open_clip_model.safetensors", size_bytes, None, licence="MIT (OpenAI CLIP)",
        source="OpenAI's CLIP release, converted by timm; size ≈ float32 tensor bytes", arch=model, hub_model=model)


# Sizes marked ≈ are the float32 tensor bytes of the architecture (what the file holds, less framing).
WEIGHTS: dict[str, WeightFile] = {w.name: w for w in (
    WeightFile(
        "adm_imagenet256", "deepinv/diffunet", "diffusion_openai.pt", 2_211_256_344,
        "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1", licence="MIT (OpenAI guided-diffusion)",
        source="OpenAI guided-diffusion 256x256_diffusion_uncond.pt (openaipublic blob, jul-2021); same bytes as "
               "sj98/DiffuseIT 256x256_diffusion_uncond.pt; size ≈",
        arch="imagenet256", arg="unet_path"),
    WeightFile(
        "adm_ffhq256", "deepinv/diffunet", "diffusion_ffhq_10m.pt", 374_255_640,
        "81d535743156ec6be34d8668e6920da94f0614074d7793a16c8fa9e306237faa",
        licence="MIT (guided-diffusion / ILVR code); trained on FFHQ images (CC BY-NC-SA 4.0)",
        source="FFHQ ADM of ILVR (Choi et al. 2021), as deepinv's docs credit it; same bytes as sj98/DiffuseIT "
               "ffhq_10m.pt; size ≈",
        arch="ffhq256", arg="unet_path"),
    WeightFile(
        "adm_imagenet512", "omriav/blended-diffusion", "checkpoints/512x512_diffusion.pt", 2_235_990_552,
        "ea4462ba9962b984a516bc7af5fc93a8fc19deaf37da48bb142eea467897557d",
        licence="MIT (OpenAI guided-diffusion code); OpenAI's model card: research use",
        source="OpenAI guided-diffusion 512x512_diffusion.pt (class-conditional ImageNet, jul-2021), the file the "
               "reference loads for --model_output_size 512 (SPEC §6); size ≈",
        arch="imagenet512", arg="unet_path", opt_in=True),
    WeightFile(
        "dino_vitb8", "timm/vit_base_patch8_224.dino", "model.safetensors", 343_231_488, None,
        licence="Apache-2.0 (facebookresearch/dino)", source="DINO ViT-B/8, converted by timm; size ≈",
        arch="dino_vitb8", arg="vit_path", hub_model=DINO_NAME),
    _clip("clip_rn50", "timm/resnet50_clip.openai", 408_241_760, "RN50-quickgelu"),
    _clip("clip_rn50x4", "timm/resnet50x4_clip.openai", 713_641_784, "RN50x4-quickgelu"),
    _clip("clip_vit_b_32", "timm/vit_base_patch32_clip_224.openai", 605_109_252, "ViT-B-32-quickgelu"),
    _clip("clip_rn50x16", "timm/resnet50x16_clip.openai", 1_164_693_056, "RN50x16-quickgelu"),
    _clip("clip_vit_b_16", "timm/vit_base_patch16_clip_224.openai", 598_482_948, "ViT-B-16-quickgelu"),
    WeightFile(
        "arcface_ir_se50", "AIRI-Institute/StyleFeatureEditor", "pretrained_models/model_ir_se50.pth", 175_296_472,
        "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28",
        licence="MIT (TreB1eN/InsightFace_Pytorch); trained on MS1M face images",
        source="TreB1eN's IR-SE50, as shipped with pSp/e4e; size ≈", arch="ir_se50", arg="arcface_path"),
)}
UNET_WEIGHTS: dict[str, str] = {"imagenet": "adm_imagenet256", "ffhq": "adm_ffhq256",  # ModelConfig.generator → entry
                                "imagenet512": "adm_imagenet512"}
TINY_UNETS: dict[str, str] = {"imagenet": "tiny", "ffhq": "tiny", "imagenet512": "tiny512"}  # the same code paths, small
CLIP_WEIGHTS: dict[str, str] = {w.hub_model: w.name for w in WEIGHTS.values() if w.name.startswith("clip_")}
assert tuple(CLIP_WEIGHTS) == OPENAI_MODELS


# --- resolving a file ----------------------------------------------------------------------


def _entry(entry: WeightFile | str) -> WeightFile:
    if isinstance(entry, WeightFile):
        return entry
    if entry not in WEIGHTS:
        raise ConfigError("names", entry, f"one of {', '.join(WEIGHTS)}")
    return WEIGHTS[entry]


def _human_size(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hf_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub saw it at import, or as the environment says now."""
    return bool(hf_constants.HF_HUB_OFFLINE) or _env_true("HF_HUB_OFFLINE")


@contextlib.contextmanager
def _offline_flag(force: bool = False) -> Iterator[None]:
    """Apply offline mode to huggingface_hub for one timm/open_clip call, which pass no ``local_files_only``.

    huggingface_hub reads HF_HUB_OFFLINE once, into ``constants``, at import, so a value set later
    is applied here; ``force`` is used when the file is known to be cached (no network round trip).
    """
    if hf_constants.HF_HUB_OFFLINE or not (force or _env_true("HF_HUB_OFFLINE")):
        yield
        return
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = False


def _missing_message(entry: WeightFile, why: str) -> str:
    """``why`` ends the sentence "<file> is not on disk and …", e.g. "was not downloaded (offline …)"."""
    fixes = [f"run `{entry.download_command}` once while online"]
    if entry.arg:
        fixes.append(f"pass a local copy with {entry.flag} (ModelConfig.{entry.arg})")
    fixes.append(f"set {entry.env_var}=/path/to/{PurePosixPath(entry.filename).name}")
    return (f"{entry.filename} ({_human_size(entry.size_bytes)}, Hugging Face repo {entry.repo_id}) is not on disk "
            f"and {why}. To fix: " + "; or ".join(fixes) + ".")


def _offline_reason() -> str | None:
    return "offline: HF_HUB_OFFLINE is set" if _hf_offline() else None


def _why(error: BaseException) -> str:
    """An error and the errors that caused it, each whole (and each once), on one line."""
    parts: list[str] = []
    while error is not None and len(parts) < 4:
        part = f"{type(error).__name__}: {' '.join(str(error).split())}"
        if part not in parts:  # httpx re-raises its transport's error under the same name and text
            parts.append(part)
        error = error.__cause__
    return parts[0] + "".join(f" (caused by {part})" for part in parts[1:])


def _local_override(entry: WeightFile, path: str | os.PathLike | None) -> Path | None:
    """The explicit path, else the environment variable's path, else None; a missing file is an error."""
    source, value = ("path", path) if path is not None else (entry.env_var, os.environ.get(entry.env_var) or None)
    if value is None:
        return None
    local = Path(value).expanduser()
    if not local.is_file():
        raise WeightsNotFound(f"{entry.filename}: {source} {str(value)!r} is not a file")
    return local


def _cached(entry: WeightFile, cache_dir: str | os.PathLike | None) -> Path | None:
    found = huggingface_hub.try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def _marker(path: Path) -> Path:
    """Where the 'already verified' stamp of a file lives (one small file per checkpoint path)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsct" / "verified"
    return root / hashlib.sha256(str(path).encode()).hexdigest()[:32]


def verify_sha256(path: str | os.PathLike, expected: str, *, label: str = "") -> None:
    """Raise ChecksumError unless the file's sha256 is ``expected``; hash a given file only once.

    A verified (path, size, mtime) is stamped under ``~/.cache/dsct/verified`` (or $XDG_CACHE_HOME), so
    a 2 GB checkpoint is not re-hashed at every start. Nothing is ever deleted.
    """
    real = Path(path).resolve()
    stat = real.stat()
    stamp = f"{expected} {stat.st_size} {stat.st_mtime_ns}\n"
    marker = _marker(real)
    with contextlib.suppress(OSError):
        if marker.read_text() == stamp:
            return
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"{path}{f' ({label})' if label else ''} has sha256 {actual}, expected {expected}: it is truncated, "
            f"corrupt or a different checkpoint. Nothing was deleted; replace the file (or delete it and run "
            f"`python -m dsct download`).")
    with contextlib.suppress(OSError):  # a read-only home only costs a re-hash next time
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp)


def resolve(
    name: WeightFile | str,
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Local path of a registry file: ``path`` > $DSCT_<NAME>_PATH > Hugging Face cache (downloading
    unless offline or ``download=False``); sha256-checked when the registry knows it.

    A file already in the cache is used without asking the Hub for a newer revision: weights do
    not change, and a machine without network would otherwise wait out huggingface_hub's retries.

    Raises WeightsNotFound (what is missing and how to provide it; HubUnreachable when the Hub did
    not answer) or ChecksumError.
    """
    return _resolve(_entry(name), path, cache_dir, None if download else "downloads are off for this call")


def _resolve(entry: WeightFile, path: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
             no_download: str | None) -> Path:
    """``resolve``; ``no_download`` says why a missing file may not be downloaded (None: it may)."""
    local = _local_override(entry, path) or _cached(entry, cache_dir)  # a cached file needs no network
    if local is None:
        local = _download(entry, cache_dir, no_download or _offline_reason())
    if entry.sha256:
        verify_sha256(local, entry.sha256, label=entry.name)
    return local


def _hub_unreachable(entry: WeightFile) -> Exception | None:
    """One request for the file's metadata, without retries: the error when the Hub gave no answer."""
    timeout = hf_constants.HF_HUB_ETAG_TIMEOUT if os.environ.get("HF_HUB_ETAG_TIMEOUT") else PROBE_TIMEOUT_S
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(entry.repo_id, entry.filename), timeout=timeout)
    except HfHubHTTPError:  # an answer (401, 404, 5xx): hf_hub_download reports it in full
        return None
    except Exception as e:  # refused, DNS, timeout, proxy, TLS — the error types differ between huggingface_hub versions
        return e
    return None


def _download(entry: WeightFile, cache_dir: str | os.PathLike | None, no_download: str | None) -> Path:
    """Fetch a file into the Hugging Face cache, or raise WeightsNotFound saying what was tried.

    A quick request goes first: without an answer, hf_hub_download would retry with back-off
    (about 25 s per file) before giving up.
    """
    if no_download:
        raise WeightsNotFound(_missing_message(entry, f"was not downloaded ({no_download})"))
    unreachable = f"could not be downloaded: the Hugging Face Hub at {hf_constants.ENDPOINT} did not answer"
    if (error := _hub_unreachable(entry)) is not None:
        raise HubUnreachable(_missing_message(entry, f"{unreachable} ({_why(error)})")) from error
    try:
        return Path(huggingface_hub.hf_hub_download(entry.repo_id, entry.filename, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:  # raised online only when its requests got no answer
        raise HubUnreachable(_missing_message(entry, f"{unreachable} ({_why(e)})")) from e
    except (OSError, EntryNotFoundError) as e:  # HTTP errors (gated, not found), disk errors
        raise WeightsNotFound(_missing_message(entry, f"could not be downloaded ({_why(e)})")) from e


@contextlib.contextmanager
def _library_hub(entry: WeightFile, cache_dir: str | os.PathLike | None, local: Path | None) -> Iterator[None]:
    """Run a timm/open_clip load; when it fetched from the hub (no ``local`` file) and the file is
    not in the cache afterwards, its failure becomes WeightsNotFound. Other errors pass through.
    A file already cached is read in offline mode, without the Hub's update check."""
    with _offline_flag(force=local is None and _cached(entry, cache_dir) is not None):
        try:
            yield
        except (OSError, RuntimeError) as e:  # timm raises hub errors; open_clip wraps them in RuntimeError
            if local is not None or _cached(entry, cache_dir) is not None:
                raise
            offline = _offline_reason()
            why = f"was not downloaded ({offline})" if offline else f"could not be downloaded ({_why(e)})"
            raise WeightsNotFound(_missing_message(entry, why)) from e


# --- reading a file ------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a checkpoint on the CPU: safetensors, or ``torch.load(weights_only=True)``.

    A ``{"state_dict": …}`` wrapper is unwrapped. Pickles holding other Python objects are
    refused (they could run code), with a message saying so.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        obj: object = safetensors.torch.load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            lines = [ln for ln in str(e).splitlines() if "Unsupported global" in ln]
            detail = [lines[0].split(" Please use")[0].strip()] if lines else []
            raise DSCTError(" ".join([
                f"{path}: refused by torch.load(weights_only=True) — it holds Python objects besides tensors "
                "(which could run code) or is not a PyTorch checkpoint.", *detail,
                "Re-save it as a plain state_dict or a .safetensors file."])) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DSCTError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return dict(obj)


def _load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], label: str) -> nn.Module:
    """Strict load into a model built on ``meta``: the checkpoint's tensors become the parameters."""
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise DSCTError(f"{label}: no weights for {left[:5]} after loading")
    return model


# --- loaders, one per network --------------------------------------------------------------


def load_unet(
    entry: WeightFile | str = "adm_imagenet256", path: str | os.PathLike | None = None, *,
    cache_dir: str | os.PathLike | None = None,
) -> UNet:
    """The ADM UNet of ``entry.arch`` with the entry's checkpoint (resolved, sha-checked, strict)."""
    entry = _entry(entry)
    state_dict = load_state_dict(resolve(entry, path, cache_dir=cache_dir))
    model = build_unet(entry.arch, device="meta")
    return _load_strict(model, checkpoint_filter_fn(state_dict, model), entry.filename)


def load_arcface(
    entry: WeightFile | str = "arcface_ir_se50", path: str | os.PathLike | None = None, *,
    cache_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """ArcFace of ``entry.arch`` with the entry's checkpoint (resolved, sha-checked, strict)."""
    entry = _entry(entry)
    state_dict = load_state_dict(resolve(entry, path, cache_dir=cache_dir))
    return _load_strict(build_arcface(entry.arch, device="meta"), state_dict, entry.filename)


def load_vit(
    entry: WeightFile | str = "dino_vitb8", path: str | os.PathLike | None = None, *,
    cache_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """DINO ViT through timm's own pretrained loading (its hub id, cache and checkpoint filter).

    A local file (``path`` or the env var) is handed to timm as ``pretrained_cfg_overlay=dict(file=…)``.
    """
    entry = _entry(entry)
    local = _local_override(entry, path)
    overlay = None if local is None else dict(file=str(local))
    with _library_hub(entry, cache_dir, local):
        return timm.create_model(
            entry.hub_model, pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=cache_dir,
            **VIT_CONFIGS[entry.arch])


def load_clip_model(
    entry: WeightFile | str, path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """One CLIP model through open_clip's own loading: tag 'openai' (its HF hub file) or a local file."""
    entry = _entry(entry)
    local = _local_override(entry, path)
    arch_kwargs = {} if entry.arch == entry.hub_model else TINY_CONFIGS[entry.arch]  # real: open_clip's config
    with _library_hub(entry, cache_dir, local):
        return open_clip.create_model(
            entry.hub_model, pretrained=str(local) if local else PRETRAINED_TAG, cache_dir=cache_dir,
            require_pretrained=True, **arch_kwargs)


def download(names: Iterable[str] | None = None, *, cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch and verify registry files (default: all but the opt-in ones) for ``python -m dsct download``; name → path.

    timm's and open_clip's files land in the Hugging Face cache where their own loaders look.
    Every file is tried; the failures are raised together at the end.
    """
    names = [n for n, entry in WEIGHTS.items() if not entry.opt_in] if names is None else names
    return _resolve_all([(name, None) for name in names], cache_dir)


def _needed(config: ModelConfig) -> list[tuple[str, str | None]]:
    """(registry name, path override) of every file ``load_models(config)`` reads; none for tiny models."""
    if config.tiny:
        return []
    unet = UNET_WEIGHTS[config.generator]
    needed = [(unet, config.unet_path), ("dino_vitb8", config.vit_path)]
    needed += [(CLIP_WEIGHTS[n], None) for n in config.clip_models] if config.load_clip else []
    needed += [("arcface_ir_se50", config.arcface_path)] if config.load_arcface else []
    return needed


def prefetch(configs: Iterable[ModelConfig], *, cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch and verify every file these model configs need, before any network is built.

    One error lists every file missing for any of them (an app serving two generators reports
    both generators' files at once). Returns name → path.
    """
    return _resolve_all(list(dict.fromkeys(item for config in configs for item in _needed(config))), cache_dir)


def _resolve_all(needed: list[tuple[str, str | None]], cache_dir: str | os.PathLike | None) -> dict[str, Path]:
    """``resolve`` each (name, path override); raise one error listing every failure.

    After the Hub failed to answer once, the rest are only looked up on disk: each further try
    would fail the same way. The error's first line says what was tried.
    """
    found: dict[str, Path] = {}
    errors: list[DSCTError] = []
    offline = _offline_reason()
    no_download, how = offline, f" ({offline}, so nothing was downloaded and every file was looked up on disk only)"
    for name, path in needed:
        entry = _entry(name)
        try:
            found[name] = _resolve(entry, path, cache_dir, no_download)
        except HubUnreachable as e:
            errors.append(e)
            no_download = "the Hugging Face Hub did not answer for an earlier file, see above"
            how = (f" (the Hugging Face Hub at {hf_constants.ENDPOINT} did not answer when {entry.filename} was to be "
                   "downloaded, so the files after it were looked up on disk only)")
        except (WeightsNotFound, ChecksumError) as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        errors.sort(key=lambda e: not isinstance(e, ChecksumError))  # a bad file first: it needs another fix
        head = f"{len(errors)} weight files are not usable{how if no_download else ''}:"
        raise type(errors[0])("\n".join([head, *map(str, errors)]))
    return found


# --- the loaded set ------------------------------------------------------------------------

def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """ModelConfig.dtype → torch dtype; "auto": bf16 on CUDA when supported, else fp16; fp32 on CPU."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class Models:
    """The frozen networks of one configuration, on one device, in the compute dtype."""

    unet: UNet
    vit: DinoFeatures
    clip: ClipEnsemble | None
    arcface: nn.Module | None
    config: ModelConfig
    device: torch.device
    dtype: torch.dtype

    @property
    def tiny(self) -> bool:
        """Random tiny models: outputs are not meaningful pictures."""
        return self.config.tiny


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build`` run with TINY_SEED in a forked RNG: identical every time, the global RNG untouched."""
    def run() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            return build()
    return run


def _tiny_builders(config: ModelConfig) -> dict[str, Callable[[], nn.Module] | None]:
    return dict(
        unet=_seeded(lambda: build_unet(TINY_UNETS[config.generator])),
        vit=_seeded(lambda: build_vit("tiny")),
        clip=_seeded(lambda: build_clip_models("tiny")) if config.load_clip else None,
        arcface=_seeded(lambda: build_arcface("tiny")) if config.load_arcface else None,
    )


def _load_clip(config: ModelConfig, cache_dir: str | os.PathLike | None) -> ClipEnsemble:
    models = [load_clip_model(CLIP_WEIGHTS[n], cache_dir=cache_dir) for n in config.clip_models]
    return ClipEnsemble(models, [open_clip.get_tokenizer(n) for n in config.clip_models], config.clip_models)


def _pretrained_builders(
    config: ModelConfig, cache_dir: str | os.PathLike | None,
) -> dict[str, Callable[[], nn.Module] | None]:
    unet = UNET_WEIGHTS[config.generator]
    prefetch([config], cache_dir=cache_dir)  # fetch and check every file before building anything
    return dict(
        unet=lambda: load_unet(unet, config.unet_path, cache_dir=cache_dir),
        vit=lambda: load_vit("dino_vitb8", config.vit_path, cache_dir=cache_dir),
        clip=(lambda: _load_clip(config, cache_dir)) if config.load_clip else None,
        arcface=(lambda: load_arcface("arcface_ir_se50", config.arcface_path, cache_dir=cache_dir))
        if config.load_arcface else None,
    )


def load_models(
    config: ModelConfig, device: str | torch.device | None = None, *, cache_dir: str | os.PathLike | None = None,
    builders: Mapping[str, Callable[[], nn.Module] | None] | None = None,
) -> Models:
    """Load (or, with ``config.tiny``, build) every network once: eval, frozen, on ``device`` in the
    compute dtype. ``device=None``: CUDA when available, else CPU. Tiny models read no file at all
    (path overrides are ignored) and have the same seeded weights on every call.

    ``builders`` (keys unet, vit, clip, arcface → a zero-argument builder or None) replaces the
    registry, e.g. real architectures with random weights for ``benchmarks/bench_step.py``.
    """
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    dtype = compute_dtype(config.dtype, device)
    if builders is None:
        builders = _tiny_builders(config) if config.tiny else _pretrained_builders(config, cache_dir)
    nets: dict[str, nn.Module | None] = {}
    for role, build in builders.items():  # one at a time onto the device: host memory holds one fp32 model
        nets[role] = None if build is None else build().to(device=device, dtype=dtype).eval().requires_grad_(False)
    nets["unet"].set_grad_checkpointing(config.grad_checkpointing)
    return Models(unet=nets["unet"], vit=DinoFeatures(nets["vit"]).eval(), clip=nets["clip"], arcface=nets["arcface"],
                  config=config, device=device, dtype=dtype)
