"""Seeded random weights for the eval networks, written where torch.hub looks for the real ones.

pytorch-fid and torchvision read ``$TORCH_HOME/hub/checkpoints/<file>`` before any download, so a test
that points TORCH_HOME at a folder holding these files runs the packages' own loading code on the
real architectures, offline, with nothing faked but the numbers in the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

INCEPTION_NAME = "pt_inception-2015-12-05-6726825d.pth"
ALEXNET_NAME = "alexnet-owt-7be5be79.pth"


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict for pytorch-fid's FID Inception (torchvision's Inception3 keys, 1008 classes, no aux
    head). He-normal convolutions keep the activations of order 1 through the eval-mode BatchNorms."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
        return net.state_dict()


def random_alexnet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.alexnet(weights=None).state_dict()


def install_random_weights(torch_home: Path) -> Path:
    """Write both files into ``torch_home/hub/checkpoints`` and return that folder."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(random_inception_state(), folder / INCEPTION_NAME)
    torch.save(random_alexnet_state(), folder / ALEXNET_NAME)
    return folder
