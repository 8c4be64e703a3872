"""Shared fixtures: tiny models of each family, built once per session and loaded through the real loader.

The hub is switched off before anything imports huggingface_hub: without ``HF_HUB_OFFLINE`` a
``from_pretrained`` of a hub id waits on the closed network (reference/environment_notes.md).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# The tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads that
# spin while another process holds the cores slow a forward down several times. MOTIONKIT_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("MOTIONKIT_TEST_THREADS", "1")))
torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_unet3d_path(tmp_path_factory):
    from motion_core.tiny import build_tiny_unet3d

    return build_tiny_unet3d(tmp_path_factory.mktemp("tiny") / "unet3d", seed=0)


@pytest.fixture(scope="session")
def tiny_animatediff_paths(tmp_path_factory):
    """:class:`motion_core.tiny.TinyAnimateDiffPaths` (sd15, motion_adapter, pipeline folders), 2 levels."""
    from motion_core.tiny import build_tiny_animatediff

    return build_tiny_animatediff(tmp_path_factory.mktemp("tiny") / "animatediff", seed=0)


@pytest.fixture(scope="session")
def tiny_animatediff4_paths(tmp_path_factory):
    """The 4-level AnimateDiff of reference/motion_clone.md section 16 (``up_blocks.1`` = 2nd decoder stage)."""
    from motion_core.tiny import build_tiny_animatediff

    return build_tiny_animatediff(tmp_path_factory.mktemp("tiny") / "animatediff4", seed=0, four_level=True)


@pytest.fixture(scope="session")
def unet3d_model(tiny_unet3d_path):
    """The tiny UNet3D as a VideoModel (shared: tests must not change its weights)."""
    from motion_core.backbones import load_video_model

    return load_video_model(tiny_unet3d_path, device="cpu")


@pytest.fixture(scope="session")
def animatediff_model(tiny_animatediff_paths):
    """The tiny AnimateDiff (combined pipeline folder) as a VideoModel (shared: do not change its weights)."""
    from motion_core.backbones import load_video_model

    return load_video_model(tiny_animatediff_paths.pipeline, device="cpu")
