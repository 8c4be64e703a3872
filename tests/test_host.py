"""nodes/host.py inside ComfyUI: where exported files go when other packs register folders of the same kind."""

from __future__ import annotations

from types import SimpleNamespace

from nodes import host


def test_exports_go_to_comfyuis_models_folder_not_another_packs_folder(tmp_path, monkeypatch):
    models = tmp_path / "ComfyUI" / "models"
    ade_folder = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-AnimateDiff-Evolved" / "motion_lora"
    registered = {"animatediff_motion_lora": [ade_folder, models / "animatediff_motion_lora"],
                  "loras": [tmp_path / "elsewhere" / "loras", models / "loras"]}
    fake = SimpleNamespace(models_dir=str(models), get_folder_paths=lambda kind: [str(p) for p in registered[kind]])
    monkeypatch.setattr(host, "folder_paths", fake)
    assert host.model_save_dir("animatediff_motion_lora") == models / "animatediff_motion_lora"
    assert host.model_save_dir("loras") == models / "loras"
    registered["loras"] = [tmp_path / "elsewhere" / "loras"]  # only an outside folder: ComfyUI's own still wins
    assert host.model_save_dir("loras") == models / "loras"
