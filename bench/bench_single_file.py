"""Loading ComfyUI's single model files vs the diffusers folder of the same weights: time and peak memory.

Three cases, each loaded in fresh processes (alternating file / folder, ``--repeat`` pairs):

* ``tiny-wan``: a whole tiny Wan 2.1 (diffusion model + umt5 + VAE) written as ComfyUI's three files and as a
  diffusers folder holding the same weights -> ``load_video_model`` on each;
* ``tiny-animatediff``: a tiny SD1.5 checkpoint + v3 motion module vs the SD1.5 folder + MotionAdapter folder;
* ``wan-1.3b``: the Wan 2.1 T2V 1.3B transformer (the real config, random weights, fp16 on disk: ~2.6 GiB)
  as ComfyUI's ``diffusion_models`` file vs a diffusers ``transformer/`` folder, loaded in bf16 (the file
  through MotionKit's single-file path, the folder through diffusers' ``from_pretrained`` as the folder
  loader does).

Reported per case: median load seconds and range; peak anonymous memory growth (RssAnon: memory the process
owns, sampled every 2 ms) and peak resident set (VmHWM, which also counts the memory-mapped file's pages the
kernel can drop); the ratio file / folder. The single-file path must not hold two copies of the weights: its
anonymous peak stays near the model's own size in the compute dtype.

    python bench/bench_single_file.py                 # all three (the 1.3B files are written once, ~2 min)
    python bench/bench_single_file.py --cases tiny-wan tiny-animatediff --repeat 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _measure import status_bytes  # noqa: E402


def _load(case: str, layout: str, paths: dict) -> object:
    import torch

    from motion_core.backbones import load_video_model

    if case == "tiny-wan":
        if layout == "file":
            return load_video_model(paths["diffusion_model"], text_encoder=paths["text_encoder"], vae=paths["vae"],
                                    device="cpu", dtype="fp32")
        return load_video_model(paths["folder"], device="cpu", dtype="fp32")
    if case == "tiny-animatediff":
        if layout == "file":
            return load_video_model(paths["checkpoint"], motion_adapter=paths["motion_module"],
                                    tokenizer=paths["tokenizer"], device="cpu", dtype="fp32")
        return load_video_model(paths["sd15"], motion_adapter=paths["motion_adapter"], device="cpu", dtype="fp32")
    if case == "wan-1.3b":
        if layout == "file":
            from motion_core.backbones.wan_files import load_wan_transformer_file

            return load_wan_transformer_file(paths["file"], dtype=torch.bfloat16)
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel.from_pretrained(paths["folder"], torch_dtype=torch.bfloat16)
    raise ValueError(case)


def _child(case: str, layout: str, paths: dict, queue) -> None:
    import ctypes
    import gc

    import torch

    torch.set_num_threads(2)
    import diffusers  # noqa: F401 - imports outside the measurement
    import transformers  # noqa: F401

    import motion_core.backbones.sd_files  # noqa: F401
    import motion_core.backbones.wan_files  # noqa: F401

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = status_bytes("RssAnon") / 2**20
    peak = {"anon": base}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anon"] = max(peak["anon"], status_bytes("RssAnon") / 2**20)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    model = _load(case, layout, paths)
    seconds = time.perf_counter() - started
    done.set()
    thread.join()
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    queue.put({"seconds": seconds, "anon": peak["anon"] - base, "hwm": status_bytes("VmHWM") / 2**20, "model": size})


def _measure(case: str, layout: str, paths: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(case, layout, paths, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return result


def _write_tiny_wan(root: Path) -> dict:
    from motion_core.tiny_wan import save_comfy_wan_files

    files = save_comfy_wan_files(root / "comfy", seed=0, diffusers_folder=root / "diffusers")
    return {**{k: str(v) for k, v in files.items()}, "folder": str(root / "diffusers")}


def _write_tiny_animatediff(root: Path) -> dict:
    from motion_core.tiny import write_tiny_sd15_files

    files = write_tiny_sd15_files(root, seed=0, version="v3")
    return {k: str(getattr(files, k)) for k in ("checkpoint", "motion_module", "sd15", "motion_adapter", "tokenizer")}


def _write_wan_13b(root: Path) -> dict:
    """The real 1.3B transformer config with random weights, in both layouts (same tensors), written once."""
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    from motion_core.backbones.single_file import shipped_config
    from motion_core.tiny_wan import _transformer_to_comfy

    file = root / "wan2.1_t2v_1.3B_random_fp16.safetensors"
    folder = root / "Wan2.1-T2V-1.3B-random" / "transformer"
    if not file.is_file() or not (folder / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in shipped_config("wan2.1_t2v_1.3b_transformer").items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = WanTransformer3DModel(**config).to(torch.float16)
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="20GB")
        state = {"model.diffusion_model." + k: v.contiguous()
                 for k, v in _transformer_to_comfy(model.state_dict()).items()}
        save_file(state, str(file))
        del model, state
    return {"file": str(file), "folder": str(folder)}


WRITERS = {"tiny-wan": _write_tiny_wan, "tiny-animatediff": _write_tiny_animatediff, "wan-1.3b": _write_wan_13b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(WRITERS), choices=list(WRITERS))
    parser.add_argument("--repeat", type=int, default=3, help="file/folder pairs per case (default 3)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "motionkit-bench-single-file",
                        help="where the 1.3B files are kept between runs")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = parser.parse_args(argv)

    raw = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            root = args.cache / case if case == "wan-1.3b" else Path(tmp) / case
            paths = WRITERS[case](root)
            runs = {"file": [], "folder": []}
            for _ in range(args.repeat):
                for layout in ("file", "folder"):
                    runs[layout].append(_measure(case, layout, paths))
            raw[case] = runs
            med = {lay: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for lay, rs in runs.items()}
            span = {lay: (min(r["seconds"] for r in rs), max(r["seconds"] for r in rs)) for lay, rs in runs.items()}
            print(f"\n{case}: model {med['file']['model']:.0f} MiB in the compute dtype, {args.repeat} fresh "
                  f"processes per layout")
            for lay in ("file", "folder"):
                m = med[lay]
                print(f"  {lay:6s} load {m['seconds']:7.2f} s (range {span[lay][0]:.2f}-{span[lay][1]:.2f}) | peak "
                      f"anonymous growth {m['anon']:7.0f} MiB ({m['anon'] / max(m['model'], 1e-9):.2f}x the model) "
                      f"| peak RSS {m['hwm']:7.0f} MiB")
            f, d = med["file"], med["folder"]
            print(f"  file / folder: time {f['seconds'] / d['seconds']:.2f}x, anonymous peak "
                  f"{f['anon'] / max(d['anon'], 1e-9):.2f}x, peak RSS {f['hwm'] / d['hwm']:.2f}x")
    if args.json:
        print(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
