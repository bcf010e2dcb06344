"""hub.py: registry, resolution order, sha256, safe loading, each library's own hub path, load_models.

Everything runs offline against a temporary Hugging Face cache laid out as huggingface_hub lays it
out (``models--org--name/{blobs,snapshots/<commit>,refs/main}``). Files hold tiny random networks
saved under the real repos and file names, loaded through the real code path with the entry's
architecture swapped for its tiny twin (``dataclasses.replace(entry, arch="tiny")``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError
from timm.models.vision_transformer import VisionTransformer

from dsct import hub
from dsct.arcface import build_arcface
from dsct.clip import OPENAI_MODELS, PRETRAINED_TAG, TINY_CONFIGS
from dsct.config import ModelConfig
from dsct.errors import ChecksumError, ConfigError, DSCTError, HubUnreachable, WeightsNotFound
from dsct.unet import MODEL_CONFIGS, build_unet
from dsct.vit import VIT_CONFIGS, build_vit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """Store bytes the way hf_hub_download does: a blob named by its sha256, a snapshot symlink, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / COMMIT / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return link


def torch_bytes(obj: object, tmp: Path) -> bytes:
    path = tmp / "obj.pt"
    torch.save(obj, path)
    return path.read_bytes()


def safetensors_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    return safetensors.torch.save({k: v.detach().contiguous().clone() for k, v in state_dict.items()})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_same_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(got[key].to(value.dtype), value), key


def _random(build) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    return {k: v.detach().clone() for k, v in build().state_dict().items()}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, tuple[bytes, dict[str, torch.Tensor]]]:
    """Registry name → (file bytes, state_dict) of a tiny random network in the entry's file format."""
    tmp = tmp_path_factory.mktemp("tiny")
    unet = _random(lambda: build_unet("tiny"))
    unet512 = _random(lambda: build_unet("tiny512"))
    vit = _random(lambda: VisionTransformer(**VIT_CONFIGS["tiny"]))
    clip = _random(lambda: open_clip.CLIP(**TINY_CONFIGS["tiny-rn"], quick_gelu=True))
    arcface = _random(lambda: build_arcface("tiny"))
    return {
        "adm_imagenet256": (torch_bytes(unet, tmp), unet),
        "adm_ffhq256": (torch_bytes(unet, tmp), unet),
        "adm_imagenet512": (torch_bytes(unet512, tmp), unet512),
        "dino_vitb8": (safetensors_bytes(vit), vit),
        "clip_rn50": (safetensors_bytes(clip), clip),
        "arcface_ir_se50": (torch_bytes({"state_dict": arcface}, tmp), arcface),
    }


TINY_ARCH = {"adm_imagenet256": "tiny", "adm_ffhq256": "tiny", "dino_vitb8": "tiny", "clip_rn50": "tiny-rn",
             "arcface_ir_se50": "tiny", "adm_imagenet512": "tiny512"}


def tiny_entry(name: str, data: bytes, **changes) -> hub.WeightFile:
    """The real registry entry (repo, file, message fields) with its tiny architecture and this file's sha."""
    entry = hub.WEIGHTS[name]
    changes = {"arch": TINY_ARCH[name], "sha256": sha(data) if entry.sha256 else None, **changes}
    return dataclasses.replace(entry, **changes)


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """Offline, no DSCT_*_PATH variables, verification stamps under tmp; returns an empty HF cache dir."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for entry in hub.WEIGHTS.values():
        monkeypatch.delenv(entry.env_var, raising=False)
    return tmp_path / "hf"


# --- the table -----------------------------------------------------------------------------


def test_registry_agrees_with_timm_open_clip_and_our_architectures():
    assert len({e.env_var for e in hub.WEIGHTS.values()}) == len(hub.WEIGHTS)
    for entry in hub.WEIGHTS.values():
        assert entry.sha256 is None or len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.size_bytes > 1e8 and entry.licence and entry.source
    dino = timm.models.get_pretrained_cfg(hub.WEIGHTS["dino_vitb8"].hub_model)
    entry = hub.WEIGHTS["dino_vitb8"]
    assert (dino.hf_hub_id, "model.safetensors") == (entry.repo_id, entry.filename)
    assert tuple(hub.CLIP_WEIGHTS) == OPENAI_MODELS
    for model_name, name in hub.CLIP_WEIGHTS.items():
        hf_hub = open_clip.get_pretrained_cfg(model_name, PRETRAINED_TAG)["hf_hub"]
        assert hf_hub.rstrip("/") == hub.WEIGHTS[name].repo_id, model_name
    for generator, name in hub.UNET_WEIGHTS.items():
        assert hub.WEIGHTS[name].arch in MODEL_CONFIGS and hub.WEIGHTS[name].flag == "--unet-path"
    assert hub.WEIGHTS["dino_vitb8"].arch in VIT_CONFIGS


# --- ADM UNet and ArcFace: dsct's own fetch, sha256, strict load ----------------------------


def test_unet_loads_strictly_from_the_hf_cache(offline, tiny_files):
    data, state_dict = tiny_files["adm_imagenet256"]
    put_in_cache(offline, "deepinv/diffunet", "diffusion_openai.pt", data)
    unet = hub.load_unet(tiny_entry("adm_imagenet256", data), cache_dir=offline)
    assert_same_weights(unet, state_dict)
    assert not any(p.is_meta for p in unet.parameters())


def test_unet_with_wrong_sha256_is_refused_and_kept(offline, tiny_files):
    data, _ = tiny_files["adm_imagenet256"]
    link = put_in_cache(offline, "deepinv/diffunet", "diffusion_openai.pt", data)
    entry = tiny_entry("adm_imagenet256", data, sha256="ab" * 32)
    with pytest.raises(ChecksumError, match=f"diffusion_openai.pt.*{sha(data)}.*expected {'ab' * 32}"):
        hub.load_unet(entry, cache_dir=offline)
    assert link.read_bytes() == data


def test_sha256_is_checked_once_per_path_size_and_mtime(offline, tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"a" * 100)
    good = sha(path.read_bytes())
    hub.verify_sha256(path, good)
    stat = path.stat()
    path.write_bytes(b"b" * 100)  # same size; restore the mtime: the stamp says "verified", no re-hash
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hub.verify_sha256(path, good)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a newer file is hashed again
    with pytest.raises(ChecksumError, match=good):
        hub.verify_sha256(path, good)


def test_arcface_loads_a_wrapped_state_dict(offline, tiny_files):
    data, state_dict = tiny_files["arcface_ir_se50"]
    put_in_cache(offline, "AIRI-Institute/StyleFeatureEditor", "pretrained_models/model_ir_se50.pth", data)
    assert_same_weights(hub.load_arcface(tiny_entry("arcface_ir_se50", data), cache_dir=offline), state_dict)


# --- DINO through timm, CLIP through open_clip ---------------------------------------------


def test_vit_loads_offline_through_timm(offline, tiny_files, tmp_path):
    data, state_dict = tiny_files["dino_vitb8"]
    put_in_cache(offline, "timm/vit_base_patch8_224.dino", "model.safetensors", data)
    entry = tiny_entry("dino_vitb8", data)
    assert_same_weights(hub.load_vit(entry, cache_dir=offline), state_dict)
    local = tmp_path / "dino.safetensors"  # a local file goes to timm as pretrained_cfg_overlay=dict(file=…)
    local.write_bytes(data)
    assert_same_weights(hub.load_vit(entry, local, cache_dir=tmp_path / "empty"), state_dict)


def test_clip_loads_offline_through_open_clip(offline, tiny_files):
    data, state_dict = tiny_files["clip_rn50"]
    put_in_cache(offline, "timm/resnet50_clip.openai", "open_clip_model.safetensors", data)
    model = hub.load_clip_model(tiny_entry("clip_rn50", data), cache_dir=offline)
    assert_same_weights(model, state_dict)


@pytest.mark.parametrize("name, loader", [
    ("adm_imagenet256", hub.load_unet), ("adm_ffhq256", hub.load_unet), ("arcface_ir_se50", hub.load_arcface),
    ("dino_vitb8", hub.load_vit), ("clip_vit_b_16", hub.load_clip_model),
])
def test_missing_weights_offline_say_what_and_how(offline, name, loader):
    entry = hub.WEIGHTS[name]
    with pytest.raises(WeightsNotFound) as info:
        loader(dataclasses.replace(entry, arch=TINY_ARCH.get(name, entry.arch)), cache_dir=offline)
    message = str(info.value)
    size = hub._human_size(entry.size_bytes)
    for part in (entry.filename, size, entry.repo_id, entry.env_var, "python -m dsct download", "offline"):
        assert part in message, (part, message)
    assert entry.flag is None or f"{entry.flag} (ModelConfig.{entry.arg})" in message
    assert name != "adm_imagenet256" or "2.21 GB" in message and "--unet-path" in message


def test_offline_set_after_import_is_honoured(offline, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # as if HF_HUB_OFFLINE=1 came after import
    with pytest.raises(WeightsNotFound, match="offline"):
        hub.load_vit(dataclasses.replace(hub.WEIGHTS["dino_vitb8"], arch="tiny"), cache_dir=offline)
    with pytest.raises(WeightsNotFound, match="offline"):
        hub.resolve("adm_ffhq256", cache_dir=offline)
    assert hf_constants.HF_HUB_OFFLINE is False


def test_cached_files_are_used_without_asking_the_hub(offline, monkeypatch, tiny_files):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # online, but every file is in the cache
    monkeypatch.delenv("HF_HUB_OFFLINE")
    data, state_dict = tiny_files["dino_vitb8"]
    put_in_cache(offline, "timm/vit_base_patch8_224.dino", "model.safetensors", data)
    entry = tiny_entry("dino_vitb8", data)
    real_download = huggingface_hub.hf_hub_download

    def offline_only(*args, **kwargs):
        assert hf_constants.HF_HUB_OFFLINE or kwargs.get("local_files_only"), "a cached file went to the network"
        return real_download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_only)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline_only)
    assert hub.resolve(entry, cache_dir=offline).parent.name == COMMIT
    assert_same_weights(hub.load_vit(entry, cache_dir=offline), state_dict)
    assert hf_constants.HF_HUB_OFFLINE is False


# --- overrides -----------------------------------------------------------------------------


def test_explicit_path_beats_env_var_beats_cache(offline, monkeypatch, tmp_path, tiny_files):
    data, _ = tiny_files["adm_ffhq256"]
    put_in_cache(offline, "deepinv/diffunet", "diffusion_ffhq_10m.pt", data)
    entry = tiny_entry("adm_ffhq256", data)
    from_env, explicit = tmp_path / "env.pt", tmp_path / "explicit.pt"
    from_env.write_bytes(data)
    explicit.write_bytes(data)
    assert hub.resolve(entry, cache_dir=offline).parent.name == COMMIT
    monkeypatch.setenv("DSCT_ADM_FFHQ256_PATH", str(from_env))
    assert hub.resolve(entry, cache_dir=offline) == from_env
    assert hub.resolve(entry, explicit, cache_dir=offline) == explicit
    explicit.write_bytes(b"not the checkpoint")  # a local file is sha-checked too
    with pytest.raises(ChecksumError, match="explicit.pt"):
        hub.resolve(entry, explicit, cache_dir=offline)


def test_missing_override_paths_are_named(offline, monkeypatch, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsNotFound, match="nope.pt"):
        hub.resolve("adm_imagenet256", missing)
    monkeypatch.setenv("DSCT_ARCFACE_IR_SE50_PATH", str(missing))
    with pytest.raises(WeightsNotFound, match="DSCT_ARCFACE_IR_SE50_PATH.*nope.pt"):
        hub.resolve("arcface_ir_se50")
    with pytest.raises(WeightsNotFound, match="nope.pt"):
        hub.load_vit("dino_vitb8", missing)
    with pytest.raises(ConfigError, match="names"):
        hub.resolve("adm_imagenet128")  # not in the registry


# --- reading files -------------------------------------------------------------------------


class NotATensor:
    """Anything a weights-only unpickler must refuse."""


def test_load_state_dict_formats_and_unsafe_pickles(tmp_path):
    weights = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    safetensors.torch.save_file(weights, tmp_path / "w.safetensors")
    torch.save(weights, tmp_path / "plain.pt")
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("w.safetensors", "plain.pt", "wrapped.pth"):
        loaded = hub.load_state_dict(tmp_path / name)
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    torch.save({"a": torch.zeros(1), "payload": NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(DSCTError, match=r"unsafe.pt: refused by torch.load\(weights_only=True\).*NotATensor"):
        hub.load_state_dict(tmp_path / "unsafe.pt")
    torch.save({"a": torch.zeros(1), "b": "text"}, tmp_path / "mixed.pt")
    with pytest.raises(DSCTError, match="not a state_dict"):
        hub.load_state_dict(tmp_path / "mixed.pt")


# --- load_models ---------------------------------------------------------------------------


def _frozen_eval(module: torch.nn.Module, dtype: torch.dtype) -> None:
    assert not module.training
    assert all(not p.requires_grad and p.dtype == dtype for p in module.parameters())


def test_tiny_models_are_seeded_frozen_and_read_no_file(monkeypatch, tmp_path):
    def no_files(*args, **kwargs):
        raise AssertionError("tiny models must not read weights")

    for target, name in [(hub, "resolve"), (hub, "load_state_dict"), (torch, "load"), (safetensors.torch, "load_file"),
                         (huggingface_hub, "hf_hub_download"), (timm, "create_model")]:
        monkeypatch.setattr(target, name, no_files)
    rng = torch.get_rng_state()
    config = ModelConfig(tiny=True, load_arcface=True, unet_path=str(tmp_path / "ignored.pt"))
    first = hub.load_models(config, "cpu", cache_dir=tmp_path / "cache")
    second = hub.load_models(config, cache_dir=tmp_path / "cache")
    assert torch.equal(torch.get_rng_state(), rng)
    assert not (tmp_path / "cache").exists()
    assert first.tiny and first.device == second.device == torch.device("cpu") and first.dtype == torch.float32
    for role in ("unet", "vit", "clip", "arcface"):
        a, b = getattr(first, role), getattr(second, role)
        _frozen_eval(a, torch.float32)
        assert_same_weights(b, a.state_dict())
    assert hub.load_models(ModelConfig(tiny=True, load_clip=False)).clip is None


def test_load_models_full_path_with_tiny_files(offline, monkeypatch, tiny_files, tmp_path):
    """The non-tiny path (prefetch, each library's loader, dtype, freezing) on tiny files in the cache."""
    for name, repo, filename in [
        ("adm_ffhq256", "deepinv/diffunet", "diffusion_ffhq_10m.pt"),
        ("dino_vitb8", "timm/vit_base_patch8_224.dino", "model.safetensors"),
        ("clip_rn50", "timm/resnet50_clip.openai", "open_clip_model.safetensors"),
    ]:
        data, _ = tiny_files[name]
        put_in_cache(offline, repo, filename, data)
        monkeypatch.setitem(hub.WEIGHTS, name, tiny_entry(name, data))
    arcface_data, arcface_sd = tiny_files["arcface_ir_se50"]
    monkeypatch.setitem(hub.WEIGHTS, "arcface_ir_se50", tiny_entry("arcface_ir_se50", arcface_data))
    arcface_file = tmp_path / "ir_se50.pth"
    arcface_file.write_bytes(arcface_data)

    config = ModelConfig(generator="ffhq", clip_models=("RN50-quickgelu",), load_arcface=True, dtype="bf16",
                         grad_checkpointing=True, arcface_path=str(arcface_file))
    models = hub.load_models(config, "cpu", cache_dir=offline)
    assert models.dtype == torch.bfloat16 and not models.tiny and models.clip.names == ("RN50-quickgelu",)
    for module, name in [(models.unet, "adm_ffhq256"), (models.vit.vit, "dino_vitb8"),
                         (models.clip.models[0], "clip_rn50"), (models.arcface, "arcface_ir_se50")]:
        _frozen_eval(module, torch.bfloat16)
        expected = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_files[name][1].items()}
        assert_same_weights(module, expected)

    # Every missing file is reported at once, before any network is built.
    with pytest.raises(WeightsNotFound) as info:
        hub.load_models(dataclasses.replace(config, arcface_path=None), "cpu", cache_dir=tmp_path / "empty")
    for name in ("adm_ffhq256", "dino_vitb8", "clip_rn50", "arcface_ir_se50"):
        assert hub.WEIGHTS[name].filename in str(info.value)


def test_download_returns_verified_paths(offline, monkeypatch, tiny_files):
    data, _ = tiny_files["adm_imagenet256"]
    put_in_cache(offline, "deepinv/diffunet", "diffusion_openai.pt", data)
    monkeypatch.setitem(hub.WEIGHTS, "adm_imagenet256", tiny_entry("adm_imagenet256", data))
    paths = hub.download(["adm_imagenet256"], cache_dir=offline)
    assert paths["adm_imagenet256"].read_bytes() == data
    with pytest.raises(WeightsNotFound, match="model_ir_se50.pth"):
        hub.download(["adm_imagenet256", "arcface_ir_se50"], cache_dir=offline)


CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


@pytest.fixture
def unreachable_hub(offline, monkeypatch) -> Path:
    """Online (HF_HUB_OFFLINE unset), with the Hub's endpoint on a closed local port; returns an empty HF cache."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    template = hf_constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(hf_constants.ENDPOINT, CLOSED_PORT)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)  # what hf_hub_url formats
    monkeypatch.setattr(hf_constants, "ENDPOINT", CLOSED_PORT)
    return offline


def test_offline_lists_every_file_of_every_config_and_says_nothing_was_downloaded(offline):
    configs = [ModelConfig(generator="imagenet", clip_models=("RN50-quickgelu",)), ModelConfig(generator="ffhq", load_clip=False)]
    with pytest.raises(WeightsNotFound) as info:
        hub.prefetch(configs, cache_dir=offline)
    lines = str(info.value).splitlines()
    assert lines[0] == ("5 weight files are not usable (offline: HF_HUB_OFFLINE is set, so nothing was downloaded and "
                        "every file was looked up on disk only):")
    assert [line.split(" (")[0] for line in lines[1:]] == [  # the shared DINO once
        "diffusion_openai.pt", "model.safetensors", "open_clip_model.safetensors", "diffusion_ffhq_10m.pt",
        "pretrained_models/model_ir_se50.pth"]
    assert all("is not on disk and was not downloaded (offline: HF_HUB_OFFLINE is set)." in line for line in lines[1:])


def test_an_unreachable_hub_is_asked_once_then_only_the_disk(unreachable_hub, monkeypatch):
    asked = []
    real_metadata = huggingface_hub.get_hf_file_metadata

    def counted(*args, **kwargs):
        asked.append(args[0])
        return real_metadata(*args, **kwargs)

    def retrying_download(*args, **kwargs):
        raise AssertionError("hf_hub_download retries with back-off for half a minute when nothing answers")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", counted)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retrying_download)
    with pytest.raises(HubUnreachable) as info:
        hub.prefetch([ModelConfig(generator="ffhq", load_clip=False)], cache_dir=unreachable_hub)
    assert asked == [f"{CLOSED_PORT}/deepinv/diffunet/resolve/main/diffusion_ffhq_10m.pt"]
    lines = str(info.value).splitlines()
    assert lines[0] == ("3 weight files are not usable (the Hugging Face Hub at http://127.0.0.1:9 did not answer when "
                        "diffusion_ffhq_10m.pt was to be downloaded, so the files after it were looked up on disk only):")
    assert lines[1].startswith("diffusion_ffhq_10m.pt (374 MB, Hugging Face repo deepinv/diffunet) is not on disk and "
                               "could not be downloaded: the Hugging Face Hub at http://127.0.0.1:9 did not answer (")
    assert "Connection refused" in lines[1]
    for line, name in zip(lines[2:], ["model.safetensors", "pretrained_models/model_ir_se50.pth"]):
        assert line.startswith(f"{name} (") and "was not downloaded (the Hugging Face Hub did not answer for an earlier file, see above)" in line


def test_a_failed_download_gives_its_whole_reason(unreachable_hub, monkeypatch):
    reason = ("The Hub answered, but this first line is long: longer than the two hundred characters that the old message "
              "kept of a reason, so a cut would fall before the end of the sentence, which does not come until here.\n"
              "A second line followed, and was dropped.")
    whole = ("The Hub answered, but this first line is long: longer than the two hundred characters that the old message "
             "kept of a reason, so a cut would fall before the end of the sentence, which does not come until here. "
             "A second line followed, and was dropped.")

    def refused(*args, **kwargs):
        raise EntryNotFoundError(reason)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *args, **kwargs: None)  # the Hub answers
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(WeightsNotFound) as info:
        hub.resolve("adm_ffhq256", cache_dir=unreachable_hub)
    assert f"is not on disk and could not be downloaded (EntryNotFoundError: {whole}). To fix:" in str(info.value)


def test_compute_dtype():
    cpu = torch.device("cpu")
    assert hub.compute_dtype("auto", cpu) == torch.float32
    explicit = [hub.compute_dtype(n, cpu) for n in ("fp32", "bf16", "fp16")]
    assert explicit == [torch.float32, torch.bfloat16, torch.float16]


# --- the class-conditional 512 generator (SPEC §6): opt-in, dsct's own fetch ----------------

FILE_512 = ("omriav/blended-diffusion", "checkpoints/512x512_diffusion.pt")


def test_imagenet512_entry_is_spec_6s_file():
    entry = hub.WEIGHTS["adm_imagenet512"]
    assert (entry.repo_id, entry.filename) == FILE_512
    assert entry.sha256 == "ea4462ba9962b984a516bc7af5fc93a8fc19deaf37da48bb142eea467897557d"
    assert entry.env_var == "DSCT_ADM_IMAGENET512_PATH" and entry.flag == "--unet-path"
    assert entry.arch == "imagenet512" and entry.hub_model is None and entry.opt_in
    assert hub._human_size(entry.size_bytes) == "2.24 GB"
    assert entry.download_command == "python -m dsct download --names adm_imagenet512"
    assert [n for n, e in hub.WEIGHTS.items() if e.opt_in] == ["adm_imagenet512"]
    assert hub.WEIGHTS["adm_imagenet256"].download_command == "python -m dsct download"


def test_imagenet512_loads_strictly_from_the_hf_cache_and_takes_class_ids(offline, tiny_files):
    data, state_dict = tiny_files["adm_imagenet512"]
    put_in_cache(offline, *FILE_512, data)
    unet = hub.load_unet(tiny_entry("adm_imagenet512", data), cache_dir=offline)
    assert_same_weights(unet, state_dict)
    assert unet.num_classes == 1000 and not any(p.is_meta for p in unet.parameters())
    with torch.no_grad():
        assert unet.eval()(torch.randn(1, 3, 64, 64), torch.tensor([500.0]), y=torch.tensor([3])).shape == (1, 6, 64, 64)


def test_imagenet512_env_var_and_wrong_sha256(offline, monkeypatch, tmp_path, tiny_files):
    data, state_dict = tiny_files["adm_imagenet512"]
    local = tmp_path / "512x512_diffusion.pt"
    local.write_bytes(data)
    monkeypatch.setenv("DSCT_ADM_IMAGENET512_PATH", str(local))
    assert_same_weights(hub.load_unet(tiny_entry("adm_imagenet512", data), cache_dir=offline), state_dict)
    with pytest.raises(ChecksumError, match=f"512x512_diffusion.pt \\(adm_imagenet512\\) has sha256 {sha(data)}"):
        hub.load_unet(tiny_entry("adm_imagenet512", data, sha256="cd" * 32), cache_dir=offline)


def test_imagenet512_missing_offline_names_the_file_and_the_command(offline, tiny_files):
    data, _ = tiny_files["adm_imagenet512"]
    with pytest.raises(WeightsNotFound) as info:
        hub.load_unet(tiny_entry("adm_imagenet512", data), cache_dir=offline)
    assert str(info.value) == (
        "checkpoints/512x512_diffusion.pt (2.24 GB, Hugging Face repo omriav/blended-diffusion) is not on disk and was "
        "not downloaded (offline: HF_HUB_OFFLINE is set). To fix: run `python -m dsct download --names adm_imagenet512` "
        "once while online; or pass a local copy with --unet-path (ModelConfig.unet_path); or set "
        "DSCT_ADM_IMAGENET512_PATH=/path/to/512x512_diffusion.pt.")


def test_imagenet512_is_downloaded_only_when_named(offline, monkeypatch, tiny_files):
    data, _ = tiny_files["adm_imagenet512"]
    with pytest.raises(WeightsNotFound) as info:  # a bare download: every default file, not the 512 one
        hub.download(cache_dir=offline)
    assert "diffusion_openai.pt" in str(info.value) and "512x512_diffusion.pt" not in str(info.value)
    assert str(info.value).startswith(f"{len(hub.WEIGHTS) - 1} weight files are not usable")
    put_in_cache(offline, *FILE_512, data)
    monkeypatch.setitem(hub.WEIGHTS, "adm_imagenet512", tiny_entry("adm_imagenet512", data))
    paths = hub.download(["adm_imagenet512"], cache_dir=offline)
    assert paths["adm_imagenet512"].read_bytes() == data


def test_cli_download_names_imagenet512(offline, monkeypatch, capsys, tiny_files):
    from dsct import cli

    data, _ = tiny_files["adm_imagenet512"]
    link = put_in_cache(offline, *FILE_512, data)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(offline))  # where the CLI's default cache is looked up
    monkeypatch.setitem(hub.WEIGHTS, "adm_imagenet512", tiny_entry("adm_imagenet512", data))
    assert cli.main(["download", "--names", "adm_imagenet512"]) == 0
    assert capsys.readouterr().out == f"adm_imagenet512\t{link}\n"


def test_cli_download_a_generator_fetches_every_file_it_needs(offline, monkeypatch, capsys, tiny_files):
    """``download imagenet512``: the 512 UNet and the ViT and CLIP files it runs with (offline, only the 512
    file cached: the error lists the others, not it); a wrong name or both forms at once: one line, exit 2."""
    from dsct import cli

    data, _ = tiny_files["adm_imagenet512"]
    put_in_cache(offline, *FILE_512, data)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(offline))
    monkeypatch.setitem(hub.WEIGHTS, "adm_imagenet512", tiny_entry("adm_imagenet512", data))
    assert cli.main(["download", "imagenet512"]) == 2
    err = capsys.readouterr().err
    assert "vit_base_patch8_224.dino" in err and "resnet50_clip.openai" in err and "512x512_diffusion.pt" not in err
    assert "diffusion_openai.pt" not in err and "model_ir_se50.pth" not in err  # not the 256 or faces files
    assert cli.main(["download", "imagenet1024"]) == 2
    assert "unknown generator 'imagenet1024'" in capsys.readouterr().err
    assert cli.main(["download", "imagenet512", "--names", "dino_vitb8"]) == 2
    assert "generators or --names, not both" in capsys.readouterr().err
