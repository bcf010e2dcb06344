"""``python app.py`` without weights: one list of every missing file of both generators, quickly, even
when the network is unreachable (a subprocess, so HF_ENDPOINT reaches huggingface_hub at import)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once
# Both generators' files (README, Weights): the ImageNet UNet, DINO and the five CLIP models; the faces UNet and ArcFace.
BOTH_GENERATORS = [
    ("diffusion_openai.pt", "deepinv/diffunet"),
    ("model.safetensors", "timm/vit_base_patch8_224.dino"),
    ("open_clip_model.safetensors", "timm/resnet50_clip.openai"),
    ("open_clip_model.safetensors", "timm/resnet50x4_clip.openai"),
    ("open_clip_model.safetensors", "timm/vit_base_patch32_clip_224.openai"),
    ("open_clip_model.safetensors", "timm/resnet50x16_clip.openai"),
    ("open_clip_model.safetensors", "timm/vit_base_patch16_clip_224.openai"),
    ("diffusion_ffhq_10m.pt", "deepinv/diffunet"),
    ("pretrained_models/model_ir_se50.pth", "AIRI-Institute/StyleFeatureEditor"),
]
# Times main() alone: importing torch and gradio on a busy machine is not what this guards.
RUN_MAIN = ("import sys, time, app; start = time.monotonic(); code = app.main([]); "
            "print(f'main() took {time.monotonic() - start:.2f} s', file=sys.stderr); sys.exit(code)")


def test_unreachable_hub_lists_every_file_of_both_generators_without_retrying(tmp_path):
    dropped = ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_ETAG_TIMEOUT", "HF_TOKEN")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DSCT_") and k not in dropped and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=CLOSED_PORT, HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", RUN_MAIN], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == ("error: 9 weight files are not usable (the Hugging Face Hub at http://127.0.0.1:9 did not "
                        "answer when diffusion_openai.pt was to be downloaded, so the files after it were looked up "
                        "on disk only):")
    missing = [line for line in lines if " is not on disk and " in line]
    assert [(line.split(" (")[0], re.search(r"Hugging Face repo ([^)]+)\)", line)[1]) for line in missing] == BOTH_GENERATORS
    took = float(re.search(r"main\(\) took ([\d.]+) s", proc.stderr)[1])
    assert took < 15, f"main() took {took} s: something waited for the network"
