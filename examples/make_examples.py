"""Write the example inputs shipped with the Space from scikit-image's bundled, freely licensed data.

Run from the repository root: ``python examples/make_examples.py`` (needs scikit-image).
Images are resized to a 384-pixel short side: enough for the 256-pixel generator, small in git.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from skimage import data

OUT = Path(__file__).resolve().parent
SHORT_SIDE = 384
IMAGES = {  # file name -> scikit-image loader
    "cat.png": data.chelsea,
    "coffee.png": data.coffee,
    "astronaut.png": data.astronaut,
    "rocket.png": data.rocket,
    "hubble.png": data.hubble_deep_field,
    "retina.png": data.retina,
    "bricks.png": data.brick,
}


def main() -> None:
    for name, load in IMAGES.items():
        img = Image.fromarray(load()).convert("RGB")
        scale = SHORT_SIDE / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        img.save(OUT / name, optimize=True)
        print(name, img.size)


if __name__ == "__main__":
    main()
