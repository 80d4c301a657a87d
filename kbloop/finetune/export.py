"""Adapters for other tools: an Ollama Modelfile, or a merged Hugging Face model folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kbloop import models
from kbloop.errors import KbloopError
from kbloop.finetune.registry import AdapterRegistry
from kbloop.fsutil import atomic_write_bytes, fsync_folder
from kbloop.models.lora_gguf import BaseArchitecture, ensure_gguf

# Written into every merged export: only a folder that holds it is one kbloop may replace.
EXPORT_MARKER = ".kbloop-export.json"


def _resolve(kb, version: str) -> tuple[str, Path, dict]:
    registry = AdapterRegistry(kb.home, kb.manifest)
    name = registry.resolve(version)
    return name, registry.path(name), registry.lineage(name)


def _base_generator(kb, lineage: dict):
    """The backend of the model the adapter was trained for, which says what Ollama's FROM
    names (the packaged GGUF, or the Hugging Face folder)."""
    spec = lineage.get("generator") or kb.settings.generator
    generator = models.create("generator", spec, kb.settings)
    if generator.ollama_base() is None or generator.base_model_dir() is None:
        raise KbloopError(f"cannot export an adapter trained for {spec}")
    return generator


def export_ollama(kb, version: str, out: Path | None) -> tuple[Path, str]:
    """A Modelfile: FROM the base model, ADAPTER the adapter as a GGUF LoRA, the form Ollama
    (like llama.cpp) takes for every architecture, Qwen2 included."""
    name, adapter_dir, lineage = _resolve(kb, version)
    generator = _base_generator(kb, lineage)
    config = json.loads((generator.base_model_dir() / "config.json").read_text())
    converted = ensure_gguf(adapter_dir, BaseArchitecture.from_hf_config(config))
    out = (out or kb.home.data_dir / "exports" / f"{name}-ollama").resolve()
    out.mkdir(parents=True, exist_ok=True)
    adapter_copy = out / "adapter.gguf"
    shutil.copyfile(converted, adapter_copy)
    modelfile = out / "Modelfile"
    modelfile.write_text(
        f"# kbloop adapter {name} for {lineage.get('generator')}\n"
        f"FROM {generator.ollama_base()}\n"
        f"ADAPTER {adapter_copy}\n"
        "PARAMETER temperature 0\n",
        encoding="utf-8",
    )
    return modelfile, f"ollama create kbloop-{name} -f {modelfile}"


def export_merged(kb, version: str, out: Path | None) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, adapter_dir, lineage = _resolve(kb, version)
    if lineage.get("generator") != kb.settings.generator:
        raise KbloopError(f"adapter {name} was trained for {lineage.get('generator')}: "
                          f"set KBLOOP_GENERATOR to it to export")
    base_dir = kb.generator.base_model_dir()
    if base_dir is None:
        raise KbloopError(f"KBLOOP_GENERATOR={kb.settings.generator} has no weights here to merge into: "
                          "use a local: or hf: model")
    out = (out or kb.home.data_dir / "exports" / f"{name}-merged").resolve()
    check_export_target(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    # A packaged model's converted folder still names its GGUF origin as a quantization; the
    # weights are plain float32, so the merged folder drops that note and saves normally.
    merged.hf_quantizer = None
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir, local_files_only=True).save_pretrained(tmp)
    atomic_write_bytes(tmp / EXPORT_MARKER, (json.dumps(
        {"adapter": name, "generator": lineage.get("generator"), "kind": "merged"}, sort_keys=True) + "\n").encode())
    replace_export(tmp, out)
    return out


def check_export_target(out: Path) -> None:
    """Refuse, before any work, a folder that holds anything but an earlier merged export: the
    export replaces the folder, and kbloop must never delete what it did not write (``-o .``
    inside the home would otherwise delete the home)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KbloopError(f"{out} exists and is not a folder: name a new or empty folder with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise KbloopError(f"{out} is not empty and holds no earlier kbloop export, so it is left alone: "
                          "name a new or empty folder with -o")


def replace_export(tmp: Path, out: Path) -> None:
    """Move the finished export in place of ``out``: a rename, after moving an earlier export
    (checked again, now) aside, so a crash leaves the old export or the new one, never a part."""
    check_export_target(out)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.is_dir():
        os.replace(out, old)  # an empty folder, or an export kbloop wrote (it holds the marker)
    try:
        os.replace(tmp, out)
    except OSError:
        if old.is_dir() and not out.exists():
            os.replace(old, out)  # the earlier export goes back where it was
        raise
    fsync_folder(out.parent)
    shutil.rmtree(old, ignore_errors=True)
