"""Autograd inside the host: ComfyUI runs every prompt under ``torch.inference_mode()``.

The stand-in executor runs node functions under inference mode as the host does, so these tests fail the
way ComfyUI failed (training: "Inference tensors cannot be saved for backward"; guidance: "element 0 of
tensors does not require grad") if the one mechanism in ``nodes/host.node_function`` is removed.
"""

from __future__ import annotations

import pytest
import torch

from executor import Executor, NodeExecutionError, isolate_host
from motion_core.autograd import InferenceModeError, autograd
from nodes import NODE_CLASS_MAPPINGS, host


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return isolate_host(tmp_path, monkeypatch)


def test_every_node_function_leaves_inference_mode():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        function = getattr(cls, cls.FUNCTION)
        assert getattr(function, "__motionkit_node_function__", False), f"{name}.{cls.FUNCTION} is not wrapped"


def test_inference_tensors_from_other_nodes_are_copied_once():
    plain = torch.ones(2)
    with torch.inference_mode():
        image, latent = torch.rand(2, 4, 4, 3), torch.zeros(1, 4, 2, 2)
    seen = {}

    def node(images, conditioning, other):
        seen.update(images=images, conditioning=conditioning, other=other,
                    grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled())
        return (images * 2,)

    with torch.inference_mode():
        (out,) = host.node_function(node)(image, conditioning=[[latent, {"pooled": latent}]], other=plain)
    assert not seen["inference"] and not seen["grad"]
    assert not seen["images"].is_inference() and torch.equal(seen["images"], image)
    cond_tensor, extra = seen["conditioning"][0]
    assert not cond_tensor.is_inference() and not extra["pooled"].is_inference()
    assert seen["other"] is plain  # ordinary tensors are not copied
    assert not out.is_inference()


def test_autograd_turns_gradients_on_under_no_grad_and_refuses_inference_mode():
    with torch.no_grad(), autograd("a test"):
        x = torch.ones(2, requires_grad=True)
        assert (x * x).sum().requires_grad
    with torch.inference_mode(), pytest.raises(InferenceModeError, match="a test needs autograd"):
        with autograd("a test"):
            pass


def _loader(model: str = "tiny_unet3d") -> dict:
    return {"class_type": "MotionKitLoadVideoModel",
            "inputs": {"model": model, "hub_id": "", "family": "auto", "dtype": "fp32", "device": "cpu",
                       "motion_adapter": "none"}}


class RepeatImageBatch:
    """Stand-in for core ``RepeatImageBatch`` (comfy_extras/nodes_images.py): a host node, so not wrapped, and
    its IMAGE is an inference tensor when it runs under the executor's inference mode, as in ComfyUI."""

    CATEGORY, FUNCTION, RETURN_TYPES = "image/batch", "repeat", ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def repeat(self, image, amount):
        assert image.is_inference() == torch.is_inference_mode_enabled()
        shifted = [torch.roll(image, shifts=2 * i, dims=2) for i in range(amount)]  # the frame moves right
        return (torch.cat(shifted),)


CLASSES = {**NODE_CLASS_MAPPINGS, "RepeatImageBatch": RepeatImageBatch}


def _train_prompt(save_name: str) -> dict:
    return {
        "1": _loader(),
        "2": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 4}},
        "3": {"class_type": "MotionKitTrainMotionDirector",
              "inputs": {"model": ["1", 0], "video": ["4", 0], "prompt": "a square", "steps": 2,
                         "learning_rate": 5e-4, "rank": 4, "frames": 4, "width": 32, "height": 32,
                         "checkpoint_every": 0, "save_name": save_name, "seed": 0, "resume_from": "none",
                         "preview_every": 0, "noise_prior_steps": 0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }


def _square_image(dirs) -> None:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (20, 20, 20))
    image.paste((230, 40, 40), (4, 12, 12, 20))
    image.save(dirs.input / "frame.png")


def test_training_in_the_host_with_a_model_cached_from_an_earlier_prompt(dirs, tiny_unet3d_path):
    """Prompt 1 loads the model (the host caches it); prompt 2 trains on that cached object with frames from a
    core node (an inference tensor), as in ComfyUI."""
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    _square_image(dirs)
    executor = Executor(CLASSES)
    first = executor.run({"1": _loader(), "2": {"class_type": "MotionKitSampler", "inputs": {
        "model": ["1", 0], "prompt": "p", "negative_prompt": "", "seed": 0, "steps": 1, "cfg": 1.0, "width": 32,
        "height": 32, "frames": 4, "scheduler": "ddim", "batch_size": 1}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}})
    motion_model = first.outputs["1"][0]
    assert not any(p.is_inference() for p in motion_model.base.parameters()), "weights made in inference mode"

    second = executor.run(_train_prompt("cached_model_run"))
    assert "1" in second.cached
    adapter = second.outputs["3"][0]
    assert (dirs.motion_adapters / "cached_model_run.safetensors").is_file()
    assert adapter is not None


def test_without_the_mechanism_training_fails_as_it_did_in_comfyui(dirs, tiny_unet3d_path, monkeypatch):
    """The same prompt with the raw node function (what the pack did before): refused with a clear message."""
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    _square_image(dirs)
    cls = NODE_CLASS_MAPPINGS["MotionKitTrainMotionDirector"]
    monkeypatch.setattr(cls, cls.FUNCTION, getattr(cls, cls.FUNCTION).__wrapped__)
    with pytest.raises(NodeExecutionError) as info:
        Executor(CLASSES).run(_train_prompt("unwrapped_run"))
    assert isinstance(info.value.original, InferenceModeError)
    assert not (dirs.motion_adapters / "unwrapped_run.safetensors").exists()
