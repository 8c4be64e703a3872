"""What the nodes offer and refuse before anything runs: the node menu, the loaders' lists (each lists only
its own kind of file or folder), placeholders and missing files refused when the prompt is queued, ComfyUI's
core VIDEO as a reference video, and the Train nodes' shared input declarations."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from executor import Executor, combo_options, isolate_host
from motion_core.errors import InputError, ModelLoadError
from motion_core.motion_model import MotionModel
from motion_core.video import moving_square_frames
from nodes import NODE_CLASS_MAPPINGS, model_files, training_common
from nodes.nodes_model import HUB_ENTRY, MotionKitLoadVideoModel
from nodes.nodes_motionclone import NO_FILES, MotionKitLoadMotionRepresentation, MotionKitLoadSparseCtrl
from nodes.nodes_motiondirector import NO_ADAPTERS, MotionKitLoadMotionAdapter
from nodes.video_input import pick_reference, video_components

TRAIN_NODES = ["MotionKitTrainMotionDirector", "MotionKitTrainMotionEmbeddings", "MotionKitTrainCustomMotion",
               "MotionKitTrainMotionMatcher"]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return isolate_host(tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------ node menu
def test_categories_use_one_casing_and_the_papers_names():
    methods = {"MotionDirector", "Motion Inversion", "Customizing Motion", "MotionMatcher", "MotionClone"}
    allowed = {"Loaders", "Sampling", "Adapters", "Evaluation"} | methods
    used = {cls.CATEGORY for cls in NODE_CLASS_MAPPINGS.values()}
    assert {c.split("/", 1)[1] for c in used} <= allowed, used
    assert all(c.split("/")[1][0].isupper() for c in used)
    # the noise prior serves MotionDirector, Motion Inversion and MotionMatcher alike: it belongs to sampling
    assert NODE_CLASS_MAPPINGS["MotionKitNoisePrior"].CATEGORY == "MotionKit/Sampling"
    assert NODE_CLASS_MAPPINGS["MotionKitSampler"].CATEGORY == "MotionKit/Sampling"
    for name in ("MotionKitLoadMotionAdapter", "MotionKitApplyMotionAdapter", "MotionKitExportMotionAdapter"):
        assert NODE_CLASS_MAPPINGS[name].CATEGORY == "MotionKit/Adapters"
    for name in ("MotionKitLoadVideoModel", "MotionKitLoadReferenceVideo"):
        assert NODE_CLASS_MAPPINGS[name].CATEGORY == "MotionKit/Loaders"


# ------------------------------------------------------------------------------------------ motion files
def _write_safetensors(path: Path, metadata: dict | None, key: str = "w") -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(2, 2)}, str(path), metadata=metadata)
    return path


@pytest.fixture
def motion_files(dirs):
    """One file of every kind the motion_adapters folder holds."""
    from motion_core.adapters.representation import MotionRepresentation

    root = dirs.motion_adapters
    rep = MotionRepresentation(layers={"up_blocks.1.attn": (torch.zeros(4, 1, 2, 1, dtype=torch.float16),
                                                             torch.zeros(4, 1, 2, 1, dtype=torch.uint8))},
                               family="unet3d", base_model="tiny", num_frames=2, width=16, height=16, k=1,
                               timestep=400, seed=0)
    rep.save(root / "reps" / "camera_pan.safetensors")
    _write_safetensors(root / "md_lora.safetensors", {"format": "motionkit.motion_adapter", "kind": "lora",
                                                     "method": "motiondirector"})
    _write_safetensors(root / "embeddings.safetensors", {"format": "motionkit.motion_adapter",
                                                        "kind": "motion_embeddings"})
    _write_safetensors(root / "ade_motion_lora.safetensors", None,
                       key="down_blocks.0.motion_modules.0.temporal_transformer.proj_in_lora.down.weight")
    (root / "reference_temporal.pt").write_bytes(b"not read when listing")
    (root / "truncated.safetensors").write_bytes(b"\x10\x00")
    return dirs


def test_each_motion_loader_lists_only_its_kind(motion_files):
    adapters = combo_options(MotionKitLoadMotionAdapter.INPUT_TYPES()["required"]["adapter_name"])
    representations = combo_options(MotionKitLoadMotionRepresentation.INPUT_TYPES()["required"]["representation"])
    assert adapters == ["ade_motion_lora.safetensors", "embeddings.safetensors", "md_lora.safetensors",
                        "reference_temporal.pt", "truncated.safetensors"]  # unreadable: an adapter, never a rep
    assert representations == ["reps/camera_pan.safetensors"]


def test_motion_file_kinds_come_from_the_header_and_are_cached(motion_files, monkeypatch):
    root = motion_files.motion_adapters
    reads = []
    real = model_files.safetensors_metadata
    monkeypatch.setattr(model_files, "safetensors_metadata", lambda p: reads.append(Path(p).name) or real(p))
    model_files._KINDS.clear()
    first = model_files.list_motion_representation_files()
    assert len(reads) == 5  # every .safetensors once; the .pt is not opened
    assert model_files.list_motion_representation_files() == first and len(reads) == 5  # cached
    # replacing a file (new size / mtime) is seen at the next listing
    _write_safetensors(root / "md_lora.safetensors", {"format": "motionkit.motion_representation"}, key="w2")
    assert model_files.list_motion_representation_files() == ["md_lora.safetensors", "reps/camera_pan.safetensors"]
    assert reads[5:] == ["md_lora.safetensors"]
    assert model_files.safetensors_metadata(root / "truncated.safetensors") is None
    assert model_files.safetensors_metadata(root / "ade_motion_lora.safetensors") == {}


def test_motion_loaders_refuse_placeholders_missing_files_and_the_other_kind(dirs, motion_files):
    assert "no motion adapters" in MotionKitLoadMotionAdapter.VALIDATE_INPUTS(adapter_name=NO_ADAPTERS)
    assert "not found" in MotionKitLoadMotionAdapter.VALIDATE_INPUTS(adapter_name="gone.safetensors")
    assert "Load Motion Representation" in MotionKitLoadMotionAdapter.VALIDATE_INPUTS(
        adapter_name="reps/camera_pan.safetensors")
    assert MotionKitLoadMotionAdapter.VALIDATE_INPUTS(adapter_name="md_lora.safetensors") is True
    assert MotionKitLoadMotionAdapter.VALIDATE_INPUTS(adapter_name="reference_temporal.pt") is True

    validate = MotionKitLoadMotionRepresentation.VALIDATE_INPUTS
    assert "Save Motion Representation" in validate(representation=NO_FILES)
    assert "not found" in validate(representation="gone.safetensors")
    assert "not a path outside" in validate(representation="../x.safetensors")
    for other in ("md_lora.safetensors", "ade_motion_lora.safetensors", "reference_temporal.pt"):
        assert "Load Motion Adapter" in validate(representation=other), other
    assert validate(representation="reps/camera_pan.safetensors") is True
    assert validate(representation="truncated.safetensors") is True  # unreadable: the loader says why
    with pytest.raises(InputError, match="not a readable"):
        MotionKitLoadMotionRepresentation().load("truncated.safetensors")


def test_empty_motion_folder_offers_placeholders_that_validation_refuses(dirs):
    assert combo_options(MotionKitLoadMotionAdapter.INPUT_TYPES()["required"]["adapter_name"]) == [NO_ADAPTERS]
    options = combo_options(MotionKitLoadMotionRepresentation.INPUT_TYPES()["required"]["representation"])
    assert options == [NO_FILES]
    with pytest.raises(InputError, match="no motion adapters"):
        MotionKitLoadMotionAdapter().load(NO_ADAPTERS)


# ------------------------------------------------------------------------------------------ model folders
def _folder(root: Path, name: str, index: dict | None, configs: dict[str, dict]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if index is not None:
        (folder / "model_index.json").write_text(json.dumps(index))
    for component, config in configs.items():
        (folder / component).mkdir()
        (folder / component / "config.json").write_text(json.dumps(config))
    return folder


UNET3D = ({"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"]},
          {"unet": {"_class_name": "UNet3DConditionModel"}})
ANIMATEDIFF = ({"_class_name": "AnimateDiffPipeline", "unet": ["diffusers", "UNetMotionModel"],
                "motion_adapter": ["diffusers", "MotionAdapter"]},
               {"unet": {"_class_name": "UNetMotionModel"}, "motion_adapter": {"_class_name": "MotionAdapter"}})
SD15 = ({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
        {"unet": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768, "in_channels": 4}})
SD15_LCM = ({"_class_name": "LatentConsistencyModelPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
            {"unet": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}})
DEEPFLOYD_IF = ({"_class_name": "IFPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
                {"unet": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 4096, "in_channels": 3}})
WAN = ({"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]},
       {"transformer": {"_class_name": "WanTransformer3DModel"}})
SDXL = ({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
        {"unet": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 2048,
                  "addition_embed_type": "text_time"}})
SD2 = ({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
       {"unet": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 1024}})
FLUX = ({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]},
        {"transformer": {"_class_name": "FluxTransformer2DModel"}})
WAN_VACE = ({"_class_name": "WanVACEPipeline", "transformer": ["diffusers", "WanVACETransformer3DModel"]},
            {"transformer": {"_class_name": "WanVACETransformer3DModel"}})
ANIMATEDIFF_SDXL = ({"_class_name": "AnimateDiffSDXLPipeline", "unet": ["diffusers", "UNetMotionModel"]},
                    {"unet": {"_class_name": "UNetMotionModel"}})

LOADABLE = {"zeroscope": (UNET3D, "unet3d"), "animatediff_v3": (ANIMATEDIFF, "animatediff"),
            "sd15": (SD15, "sd15"), "sd15_lcm": (SD15_LCM, "sd15"), "wan21": (WAN, "wan")}
FOREIGN = {"sdxl": SDXL, "sd2": SD2, "flux": FLUX, "wan_vace": WAN_VACE, "animatediff_sdxl": ANIMATEDIFF_SDXL,
           "deepfloyd_if": DEEPFLOYD_IF}


@pytest.fixture
def model_folders(dirs):
    for name, ((index, configs), _) in LOADABLE.items():
        _folder(dirs.diffusers, name, index, configs)
    for name, (index, configs) in FOREIGN.items():
        _folder(dirs.diffusers, name, index, configs)
    _folder(dirs.diffusers, "nested/zeroscope_576w", *UNET3D)
    _folder(dirs.diffusers, "no_classes", {}, {})
    _folder(dirs.diffusers, "motion_adapter_v3", None, {})
    (dirs.diffusers / "motion_adapter_v3" / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter"}))
    return dirs


def test_video_model_list_holds_only_families_motionkit_loads(model_folders):
    spec = MotionKitLoadVideoModel.INPUT_TYPES()["required"]
    assert combo_options(spec["model"]) == ["animatediff_v3", "nested/zeroscope_576w", "sd15", "sd15_lcm", "wan21",
                                            "zeroscope", HUB_ENTRY]
    assert combo_options(spec["motion_adapter"]) == ["none", "motion_adapter_v3"]
    for name, (_, family) in LOADABLE.items():
        assert model_files.video_model_kind(model_folders.diffusers / name).family == family
    for name in FOREIGN:
        kind = model_files.video_model_kind(model_folders.diffusers / name)
        assert kind.foreign and not kind.loadable, name


def test_the_list_agrees_with_motion_core_family_detection(model_folders):
    """model_files mirrors motion_core.backbones' detectors without importing diffusers: they must agree."""
    from motion_core.backbones import detect_family

    for name, (_, family) in LOADABLE.items():
        if family != "sd15":
            assert detect_family(model_folders.diffusers / name) == family, name
    from motion_core.backbones import load_video_model

    with pytest.raises(ModelLoadError, match="motion adapter"):  # SD1.5 becomes animatediff with an adapter
        detect_family(model_folders.diffusers / "sd15")
    with pytest.raises(ModelLoadError, match="cannot tell the model family"):
        detect_family(model_folders.diffusers / "flux")
    with pytest.raises(ModelLoadError, match="not VACE"):  # detected as wan, refused by the wan loader
        load_video_model(model_folders.diffusers / "wan_vace", device="cpu")


def test_video_model_validation(model_folders):
    validate = MotionKitLoadVideoModel.VALIDATE_INPUTS
    assert validate(model="zeroscope", hub_id="", motion_adapter="none") is True
    assert "cannot load" in validate(model="sdxl", hub_id="", motion_adapter="none")
    assert "FluxPipeline" in validate(model="flux", hub_id="", motion_adapter="none")
    assert "not found" in validate(model="gone", hub_id="", motion_adapter="none")
    assert validate(model="no_classes", hub_id="", motion_adapter="none") is True  # the loader says what is missing
    assert "motion module" in validate(model="sd15", hub_id="", motion_adapter="none")
    assert validate(model="sd15", hub_id="", motion_adapter="motion_adapter_v3") is True
    assert "neither an AnimateDiff motion module file nor a MotionAdapter folder" in validate(
        model="sd15", hub_id="", motion_adapter="zeroscope")
    assert "hub_id is empty" in validate(model=HUB_ENTRY, hub_id=" ", motion_adapter="none")
    assert validate(model=HUB_ENTRY, hub_id="owner/name", motion_adapter="none") is True
    assert validate(model=None, hub_id=None, motion_adapter=None) is True  # linked inputs: checked at run time


def test_video_model_kinds_are_cached_until_a_config_changes(model_folders, monkeypatch):
    reads = []
    real = model_files._read_json
    monkeypatch.setattr(model_files, "_read_json", lambda p: reads.append(p) or real(p))
    model_files._FOLDERS.clear()
    folder = model_folders.diffusers / "zeroscope"
    assert model_files.video_model_kind(folder).family == "unet3d" and len(reads) == 2
    assert model_files.video_model_kind(folder).family == "unet3d" and len(reads) == 2
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}) + " ")
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    assert model_files.video_model_kind(folder).foreign and len(reads) == 4


# ------------------------------------------------------------------------------------------ placeholders
def test_sparsectrl_hub_placeholder_and_missing_folder_are_refused(dirs):
    validate = MotionKitLoadSparseCtrl.VALIDATE_INPUTS
    assert combo_options(MotionKitLoadSparseCtrl.INPUT_TYPES()["required"]["sparsectrl"]) == ["(hub id below)"]
    assert "hub_id is empty" in validate(sparsectrl="(hub id below)", hub_id="")
    assert "not found" in validate(sparsectrl="gone", hub_id="")
    assert validate(sparsectrl="(hub id below)", hub_id="guoyww/animatediff-sparsectrl-rgb") is True


@pytest.mark.parametrize("name", TRAIN_NODES)
def test_train_nodes_refuse_a_resume_point_that_does_not_exist(name, dirs):
    validate = NODE_CLASS_MAPPINGS[name].VALIDATE_INPUTS
    assert validate(save_name="run", resume_from="none") is True
    assert "no checkpoint of 'run'" in validate(save_name="run", resume_from="latest")
    assert "was not found" in validate(save_name="run", resume_from="run/checkpoint-000010")
    assert "must not contain" in validate(save_name="a/b", resume_from="none")
    checkpoint = dirs.output / "motionkit_training" / "run" / "checkpoint-000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    assert validate(save_name="run", resume_from="latest") is True
    assert validate(save_name="run", resume_from="run/checkpoint-000010") is True
    assert validate(save_name=None, resume_from="latest") is True  # linked save name: known at run time


def test_custom_motion_refuses_a_missing_video_folder(dirs, tmp_path):
    validate = NODE_CLASS_MAPPINGS["MotionKitTrainCustomMotion"].VALIDATE_INPUTS
    assert "video_folder" in validate(video_folder=str(tmp_path / "nowhere"), prior_folder="")
    assert "prior_folder" in validate(video_folder="", prior_folder=str(tmp_path / "nowhere"))
    assert validate(video_folder=str(tmp_path), prior_folder="  ") is True


# ------------------------------------------------------------------------------------------ core VIDEO
class StandInVideo:
    """The shape of comfy_api's VideoInput that MotionKit relies on: get_components() -> images, audio,
    frame_rate (a Fraction)."""

    def __init__(self, images: torch.Tensor, frame_rate: Fraction) -> None:
        self.images, self.frame_rate = images, frame_rate
        self.calls = 0

    def get_components(self):
        self.calls += 1
        return SimpleNamespace(images=self.images, audio=None, frame_rate=self.frame_rate, metadata=None)


def test_video_components_give_frames_and_fps():
    frames = torch.rand(5, 8, 8, 3)
    got = video_components(StandInVideo(frames, Fraction(24000, 1001)))
    assert torch.equal(got.frames, frames) and got.fps == pytest.approx(23.976, abs=1e-3)
    with torch.inference_mode():
        inference_frames = torch.rand(3, 8, 8, 3)
    copied = video_components(StandInVideo(inference_frames, Fraction(8))).frames
    assert not copied.is_inference() and torch.equal(copied, inference_frames)
    assert video_components(StandInVideo(frames, Fraction(0))).fps is None
    with pytest.raises(InputError, match="must be a VIDEO"):
        video_components(frames)
    with pytest.raises(InputError, match="no frames"):
        video_components(StandInVideo(torch.rand(0, 8, 8, 3), Fraction(8)))


def test_pick_reference_takes_one_of_image_and_video():
    image, video = torch.rand(4, 8, 8, 3), StandInVideo(torch.rand(6, 8, 8, 3), Fraction(12))
    assert pick_reference(image, None, 16.0).fps == 16.0
    assert pick_reference(image, None, 0.0).fps is None
    picked = pick_reference(None, video, 16.0)  # the VIDEO brings its own rate
    assert picked.frames.shape[0] == 6 and picked.fps == 12.0
    with pytest.raises(InputError, match="connect only one"):
        pick_reference(image, video)
    with pytest.raises(InputError, match="No reference video"):
        pick_reference(None, None)
    assert pick_reference(None, None, required=False) is None


NODES_WITH_A_REFERENCE_VIDEO = {
    "MotionKitTrainMotionDirector": "video", "MotionKitTrainMotionEmbeddings": "video",
    "MotionKitTrainCustomMotion": "video", "MotionKitTrainMotionMatcher": "video",
    "MotionKitNoisePrior": "reference_video", "MotionKitExtractMotionRepresentation": "reference_video",
}


@pytest.mark.parametrize("name", sorted(NODES_WITH_A_REFERENCE_VIDEO))
def test_every_reference_video_input_has_a_core_video_alternative_last(name):
    spec = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
    optional = spec["optional"]
    # last of the inputs of its time; only inputs added later follow it (new inputs go at the end: the Train
    # nodes' checkpoint scoring, then their speed settings)
    names = list(optional)
    assert optional["core_video"][0] == "VIDEO"
    assert names[names.index("core_video") + 1:] in (
        [], ["score_checkpoints", "keep_best", "clip", "checkpointing", "compile"])
    image = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["optional"][NODES_WITH_A_REFERENCE_VIDEO[name]]
    assert image[0] == "IMAGE"  # optional, so that the VIDEO alone is a complete input


def test_extraction_from_a_core_video_equals_extraction_from_its_frames(unet3d_model):
    from nodes.nodes_motionclone import MotionKitExtractMotionRepresentation

    frames = moving_square_frames(8, 32, 32, square=8, velocity=(2, 0))
    node = MotionKitExtractMotionRepresentation()
    args = dict(frames=4, width=32, height=32, seed=3, timestep=400, k=1)
    from_image, _ = node.extract(unet3d_model, reference_video=frames, **args)
    from_video, info = node.extract(unet3d_model, core_video=StandInVideo(frames, Fraction(8)), **args)
    assert from_image.layer_names == from_video.layer_names
    for name in from_image.layer_names:
        assert all(torch.equal(a, b) for a, b in zip(from_image.layers[name], from_video.layers[name]))
    with pytest.raises(InputError, match="connect only one"):
        node.extract(unet3d_model, reference_video=frames, core_video=StandInVideo(frames, Fraction(8)), **args)
    with pytest.raises(InputError, match="No reference video"):
        node.extract(unet3d_model, **args)


class CoreCreateVideo:
    """Stand-in for core Create Video whose VIDEO has get_components(), as comfy_api's VideoFromComponents."""

    CATEGORY = "image/video"
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {}), "fps": ("FLOAT", {"default": 30.0, "min": 1.0,
                                                                         "max": 120.0})}}

    def execute(self, images, fps):
        return (StandInVideo(images, Fraction(fps).limit_denominator(1001)),)


class KeepModel:
    """An output node that keeps the MOTION_MODEL it gets (so the graph has an output)."""

    CATEGORY = "test"
    RETURN_TYPES = ()
    FUNCTION = "keep"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MOTION_MODEL", {})}}

    def keep(self, model):
        return ()


def test_noise_prior_takes_a_core_video_in_a_graph(dirs, tiny_unet3d_path):
    """Load Reference Video -> Create Video -> Noise Prior (core_video) runs as the host runs graphs, and gives
    the same inversion as the IMAGE input."""
    from motion_core.video import write_moving_square_video

    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    write_moving_square_video(dirs.input / "square.mp4", num_frames=4, fps=8, width=32, height=32, square=8)
    loader = {"class_type": "MotionKitLoadVideoModel",
              "inputs": {"model": "tiny_unet3d", "hub_id": "", "family": "auto", "dtype": "fp32", "device": "cpu",
                         "motion_adapter": "none"}}
    video = {"class_type": "MotionKitLoadReferenceVideo",
             "inputs": {"video": "square.mp4", "frames": 4, "fps": 0.0, "width": 32, "height": 32,
                        "start_frame": 0}}

    def prompt(socket: str, source: list) -> dict:
        return {"1": loader, "2": video, "3": {"class_type": "CoreCreateVideo", "inputs": {"images": ["2", 0],
                                                                                             "fps": 8.0}},
                "4": {"class_type": "MotionKitNoisePrior",
                      "inputs": {"model": ["1", 0], "p": 0.5, "inversion_steps": 2, "clip_index": 0, socket: source}},
                "5": {"class_type": "KeepModel", "inputs": {"model": ["4", 0]}}}

    classes = {**NODE_CLASS_MAPPINGS, "CoreCreateVideo": CoreCreateVideo, "KeepModel": KeepModel}
    by_video = Executor(classes).run(prompt("core_video", ["3", 0])).outputs["4"][0]
    by_image = Executor(classes).run(prompt("reference_video", ["2", 0])).outputs["4"][0]
    assert isinstance(by_video, MotionModel) and torch.equal(by_video.noise_prior.inverted,
                                                             by_image.noise_prior.inverted)


def test_train_node_takes_a_core_video_with_its_frame_rate(unet3d_model, dirs):
    """A VIDEO at 16 fps trains exactly as the same frames given as IMAGE with video_fps = 16 (both sampled at
    training_fps = 8)."""
    from nodes.nodes_motiondirector import MotionKitTrainMotionDirector

    frames = moving_square_frames(16, 32, 32, square=8, velocity=(1, 0), start=(4, 12))
    args = dict(model=MotionModel.wrap(unet3d_model), prompt="a square", steps=1, learning_rate=5e-4, rank=2,
                frames=8, width=32, height=32, checkpoint_every=0, seed=0, resume_from="none", preview_every=0,
                preview_steps=1, noise_prior_steps=0, training_fps=8.0)
    node = MotionKitTrainMotionDirector()
    by_video, _, _ = node.train(save_name="by_video", core_video=StandInVideo(frames, Fraction(16)), **args)
    by_image, _, _ = node.train(save_name="by_image", video=frames, video_fps=16.0, **args)
    assert [s.name for s in by_video.sets] == [s.name for s in by_image.sets]
    for a, b in zip(by_video.sets, by_image.sets):
        assert a.weights.keys() == b.weights.keys()
        assert all(torch.equal(x, y) for k in a.weights for x, y in zip(a.weights[k], b.weights[k]))
    with pytest.raises(InputError, match="connect only one"):
        node.train(save_name="both", video=frames, core_video=StandInVideo(frames, Fraction(16)), **args)
    with pytest.raises(InputError, match="No reference video"):
        node.train(save_name="none", **args)


# ------------------------------------------------------------------------------------------ shared inputs
TRAIN_DEFAULTS = {
    # node: {input: (default, min, max)} -- what saved workflows and users rely on; the shared declarations
    # in training_common take the method's value, so a slip there changes these
    "MotionKitTrainMotionDirector": {"steps": (150, 1, 100000), "learning_rate": (5e-4, 1e-7, 1.0),
                                     "rank": (32, 1, 512), "frames": (16, 1, 128), "width": (384, 8, 8192),
                                     "height": (384, 8, 8192), "checkpoint_every": (50, 0, 100000),
                                     "training_fps": (8.0, 0.5, 240.0), "preview_every": (50, 0, 100000),
                                     "preview_steps": (30, 1, 1000), "noise_prior_steps": (50, 0, 1000),
                                     "weight_decay": (-1.0, -1.0, 1.0)},
    "MotionKitTrainMotionEmbeddings": {"steps": (400, 1, 100000), "learning_rate": (0.02, 1e-7, 10.0),
                                       "frames": (24, 1, 128), "width": (576, 8, 8192), "height": (320, 8, 8192),
                                       "checkpoint_every": (50, 0, 100000), "training_fps": (0.0, 0.0, 240.0),
                                       "preview_every": (100, 0, 100000), "preview_steps": (30, 1, 1000),
                                       "noise_prior": (0.5, 0.0, 1.0), "noise_prior_steps": (50, 0, 1000),
                                       "weight_decay": (0.01, 0.0, 1.0)},
    "MotionKitTrainCustomMotion": {"steps": (3000, 1, 100000), "learning_rate": (5e-6, 1e-9, 1.0),
                                   "frames": (16, 1, 128), "width": (384, 8, 8192), "height": (384, 8, 8192),
                                   "checkpoint_every": (500, 0, 100000), "training_fps": (24.0, 0.5, 240.0),
                                   "preview_every": (500, 0, 100000), "preview_steps": (25, 1, 1000),
                                   "weight_decay": (0.01, 0.0, 1.0)},
    "MotionKitTrainMotionMatcher": {"steps": (400, 1, 100000), "learning_rate": (5e-4, 1e-7, 1.0),
                                    "rank": (32, 1, 512), "frames": (16, 1, 128), "width": (384, 8, 8192),
                                    "height": (384, 8, 8192), "checkpoint_every": (50, 0, 100000),
                                    "training_fps": (8.0, 0.5, 240.0), "preview_every": (50, 0, 100000),
                                    "preview_steps": (30, 1, 1000), "noise_prior": (0.3, 0.0, 1.0),
                                    "noise_prior_steps": (75, 1, 1000), "weight_decay": (0.01, 0.0, 1.0)},
}


@pytest.mark.parametrize("name", TRAIN_NODES)
def test_train_nodes_keep_their_method_defaults(name, dirs):
    spec = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
    inputs = {**spec["required"], **spec["optional"]}
    for input_name, expected in TRAIN_DEFAULTS[name].items():
        options = inputs[input_name][1]
        assert (options["default"], options["min"], options["max"]) == expected, (name, input_name)
    assert inputs["seed"][1]["control_after_generate"] and inputs["seed"][1]["max"] == training_common.MAX_SEED
    assert inputs["mixed_precision"][0] == training_common.PRECISIONS
    assert inputs["gradient_checkpointing"][1]["default"] is True
    assert inputs["resume_from"][1]["default"] == "none"


def test_shared_declarations_are_the_same_objects_everywhere():
    """One declaration per shared input: the same widget spec (but for the method's values) on every node."""
    specs = {name: {**NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"],
                    **NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["optional"]} for name in TRAIN_NODES}
    for input_name in ("save_name", "seed", "resume_from", "checkpoint_every", "mixed_precision",
                       "gradient_checkpointing", "preview_every", "preview_prompt", "video_fps"):
        shapes = {json.dumps({k: v for k, v in spec[input_name][1].items() if k not in ("default", "tooltip")},
                             sort_keys=True) for spec in specs.values()}
        assert len(shapes) == 1, (input_name, shapes)
