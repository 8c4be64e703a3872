"""Memory of loading a Wan diffusion-model file: one copy of the weights, never two.

Writes a 1.3B-wide Wan transformer with 6 of its 30 blocks (~580 MiB in fp16, ComfyUI layout) into a temporary
folder and loads it with ``wan_files.load_wan_transformer_file`` in bf16 and fp32, sampling the process's
anonymous memory (RssAnon: what the process owns) and its file-backed pages (RssFile: the memory-mapped file,
page cache the kernel can drop) every 2 ms. Expect the peak anonymous growth to be the model's own size in the
compute dtype (file size for bf16/fp16, twice it for fp32) -- no second copy -- while the file-backed pages
reach the file's size. Linux only (reads /proc/self/status).

    python bench/bench_wan_files_memory.py
"""

from __future__ import annotations

import ctypes
import gc
import tempfile
import threading
import time
from pathlib import Path

import torch


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _write(path: Path) -> float:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    from motion_core.tiny_wan import _transformer_to_comfy

    with init_empty_weights():
        model = WanTransformer3DModel(num_attention_heads=12, ffn_dim=8960, num_layers=6)
    state = {"model.diffusion_model." + k: torch.full(v.shape, 0.01, dtype=torch.float16)
             for k, v in _transformer_to_comfy(model.state_dict()).items()}
    save_file(state, str(path))
    return sum(v.numel() * 2 for v in state.values()) / 2**20


def _measure(path: Path, dtype: torch.dtype) -> dict[str, float]:
    from motion_core.backbones import wan_files

    peak = {"anon": 0.0, "file": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anon"] = max(peak["anon"], _status_mib("RssAnon"))
            peak["file"] = max(peak["file"], _status_mib("RssFile"))
            time.sleep(0.002)

    gc.collect()
    try:  # hand freed blocks back to the OS so an earlier run's memory does not hide this one's
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = _status_mib("RssAnon")
    thread = threading.Thread(target=sample)
    thread.start()
    model = wan_files.load_wan_transformer_file(path, dtype=dtype)
    done.set()
    thread.join()
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    result = {"model": size, "anon": peak["anon"] - base, "file": peak["file"]}
    del model
    return result


def main() -> None:
    import motion_core.backbones.wan_files  # noqa: F401 - imports outside the measurement

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wan2.1_t2v_1.3B_6blocks_fp16.safetensors"
        size = _write(path)
        print(f"file: {size:.0f} MiB fp16")
        for dtype in (torch.bfloat16, torch.float32):
            r = _measure(path, dtype)
            print(f"{str(dtype):15s} model {r['model']:6.0f} MiB | peak anonymous growth {r['anon']:6.0f} MiB "
                  f"({r['anon'] / r['model']:.2f}x the model) | peak file-backed {r['file']:6.0f} MiB")


if __name__ == "__main__":
    main()
