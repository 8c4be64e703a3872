"""Side-by-side measurement helpers for bench/ scripts.

Each candidate runs in a fresh process (multiprocessing, spawn) so that peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``; on Linux CPUs the peak RSS (VmHWM) of the measured calls above the RSS
before them -- the high-water mark is reset through ``/proc/self/clear_refs`` after the warm-up call, and
glibc is told to return large blocks to the OS (mmap threshold 64 KiB, ``malloc_trim``) so that memory the
warm-up freed does not hide the measured calls' own peak. Elsewhere ``ru_maxrss`` growth (a lower bound).
Times are the median of ``repeat`` calls after one warm-up call.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time
from typing import Any, Callable


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _glibc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def status_bytes(field: str) -> int:
    """A byte figure of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``...); 0 where there is none."""
    kib = _status_kib(field)
    return 0 if kib is None else kib * 1024


def live_heap_bytes() -> int | None:
    """Bytes the C heap has handed out and not got back (glibc ``mallinfo2``: in-use arena chunks + mmapped
    chunks, every arena): the process's live allocations -- tensors included -- without the freed memory
    glibc keeps mapped, which RSS counts. None where glibc's ``mallinfo2`` is missing."""
    import ctypes

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakLiveHeap:
    """``with PeakLiveHeap() as peak:`` -- the highest :func:`live_heap_bytes` after any torch operation inside
    (``peak.bytes``; None without glibc). Slows every op down (one ``mallinfo2`` each), so benches run it on
    a step they do not time."""

    def __init__(self) -> None:
        self.bytes: int | None = None
        self._mode: Any = None

    def __enter__(self) -> "PeakLiveHeap":
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        tracker.bytes = live_heap_bytes()
        if tracker.bytes is None:
            return self

        class Sample(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                out = func(*args, **(kwargs or {}))
                tracker.bytes = max(tracker.bytes, live_heap_bytes())
                return out

        self._mode = Sample()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None


def trainer_step(model, method, clip, *, checkpointing: bool = True, units=None, update: bool = True):
    """``run()``: one step of ``method`` on the cached ``clip`` as the trainer takes it -- inside
    ``training.step_levers``, the trainer's checkpointing (every unit, ``units`` only, or none), autocast and
    GradScaler as ``mixed_precision: auto`` picks them, every group's gradient at the same weights, clip norms
    and one AdamW update (``update=False``: gradients only). Without the trainer's data, caching, checkpoints
    and previews, so the benches can time the step alone at any size."""
    import contextlib

    import torch

    from motion_core.training import (Batch, TrainingConfig, _checkpoint_every_denoiser, autocast_dtype,
                                      grad_scaler, step_levers)

    groups = method.setup(model, [clip], torch.Generator().manual_seed(0))
    for g in groups:
        for p in g.params:
            p.requires_grad_(True)
    by_name = {g.name: g for g in groups}
    optimizer = torch.optim.AdamW([{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay,
                                    "betas": g.betas, "eps": g.eps} for g in groups])
    method.train_mode(model)
    half = autocast_dtype(TrainingConfig(), model)
    scaler = grad_scaler(model, half)
    grads: dict[int, torch.Tensor] = {}
    backed: set[int] = set()

    def backward(loss, names):
        backed.add(id(loss))
        params = [p for n in names for p in by_name[n].params if p.requires_grad]
        scaled = scaler.scale(loss) if scaler is not None else loss
        for p, g in zip(params, torch.autograd.grad(scaled, params, allow_unused=True)):
            if g is not None:
                grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g

    def run():
        grads.clear()
        backed.clear()
        batch = Batch(step=0, clip=clip, model=model, generator=torch.Generator().manual_seed(1), method=method,
                      _backward=backward)
        autocast = (torch.autocast(model.device.type, dtype=half) if half is not None
                    else contextlib.nullcontext())
        with _checkpoint_every_denoiser(model, checkpointing, units=units), step_levers(model), autocast:
            out = method.training_step(model, batch)
            for loss in {id(v): v for v in out.losses.values()}.values():  # not back-propagated in the step
                if id(loss) not in backed:
                    backward(loss, [n for n, other in out.losses.items() if other is loss])
        if not update:
            return out
        for g in groups:
            for p in g.params:
                p.grad = grads.get(id(p))
            if g.max_grad_norm and scaler is None:
                torch.nn.utils.clip_grad_norm_([p for p in g.params if p.grad is not None], g.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    return run


def zeroscope_topology_model(base_model: str = "bench-zeroscope-topology"):
    """The benches' UNet3D: ZeroScope's topology at a tenth of its widths (32/64/128/128, 2 layers per block,
    head dim 8), random weights (perturbed, since zero-initialised output projections would make the temporal
    layers no-ops), with the tiny model's CLIP, VAE and scheduler; frozen, fp32 on the CPU."""
    import torch
    from diffusers import UNet3DConditionModel

    from motion_core.backbones import load_video_model
    from motion_core.backbones.unet3d import UNet3DVideoModel
    from motion_core.tiny import ensure_tiny_model

    tiny = load_video_model(ensure_tiny_model("unet3d"), device="cpu")
    torch.manual_seed(0)
    unet = UNet3DConditionModel(block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=8,
                                cross_attention_dim=tiny.text_encoder.config.hidden_size, norm_num_groups=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet.requires_grad_(False).eval()
    return UNet3DVideoModel(denoiser=unet, vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                            scheduler=tiny.scheduler, base_model=base_model)


def _reset_peak() -> int | None:
    """Reset the RSS high-water mark; returns the current RSS in bytes (None where unsupported)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


def _child(setup: Callable[[], Callable[[], Any]], repeat: int, queue: "mp.Queue") -> None:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: large tensors are mmapped and given back on free
    run = setup()
    run()  # warm-up (lazy inits, allocator caches)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = None if cuda else _reset_peak()
    before = _peak_rss_bytes()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    elif base_rss is not None:
        peak = max(0, (_status_kib("VmHWM") or 0) * 1024 - base_rss)
    else:
        peak = max(0, _peak_rss_bytes() - before)
    queue.put({"seconds": statistics.median(times), "peak_bytes": peak, "device": "cuda" if cuda else "cpu"})


def measure(setup: Callable[[], Callable[[], Any]], repeat: int = 3) -> dict:
    """Run ``setup()`` in a fresh process, then time the callable it returns; ``setup`` must be a
    module-level function (picklable)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, repeat, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


def report(title: str, ours: dict, baseline: dict, names: tuple[str, str] = ("ours", "baseline")) -> None:
    print(f"\n{title}")
    for name, r in zip(names, (ours, baseline)):
        print(f"  {name:>24}: {r['seconds'] * 1000:9.1f} ms   peak {mib(r['peak_bytes'])}  ({r['device']})")
    t = ours["seconds"] / baseline["seconds"]
    m = ours["peak_bytes"] / baseline["peak_bytes"] if baseline["peak_bytes"] else float("nan")
    print(f"  ratio {names[0]}/{names[1]}: time {t:.3f}x   peak memory {m:.3f}x")
