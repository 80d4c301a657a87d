"""A PEFT LoRA adapter written as a GGUF LoRA, the form llama.cpp (and Ollama) apply at run time.

Training saves the adapter as ``adapter_model.safetensors`` with Hugging Face tensor names;
llama.cpp wants the same matrices under its own names (``blk.3.attn_q.weight.lora_a``) in a
GGUF file of type ``adapter``, with the LoRA alpha in its metadata. The matrices themselves
are copied as they are, except for one layout difference: llama.cpp's converter permutes the
rows of the query and key projections of llama-architecture models for its rotary embedding,
so a LoRA ``B`` matrix of those projections needs the same permutation.

The GGUF file is written once beside the safetensors (``adapter_model.gguf``) and reused; it is
written to a temporary name and renamed, so a crash never leaves half a file under that name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kbloop.errors import KbloopError

GGUF_NAME = "adapter_model.gguf"

# "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" -> the base weight's name and "A".
PEFT_TENSOR = re.compile(r"^base_model\.model\.(?P<base>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")


class AdapterConversionError(KbloopError):
    """A PEFT adapter that cannot be written as a GGUF LoRA (an unsupported architecture or option)."""


@dataclass(frozen=True)
class BaseArchitecture:
    """What the conversion needs to know about the base model, read from its GGUF metadata."""

    name: str           # general.architecture: "qwen2", "llama", ...
    block_count: int
    head_count: int
    head_count_kv: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "BaseArchitecture":
        arch = metadata["general.architecture"]
        heads = int(metadata[f"{arch}.attention.head_count"])
        return cls(arch, int(metadata[f"{arch}.block_count"]), heads,
                   int(metadata.get(f"{arch}.attention.head_count_kv", heads)))


    @classmethod
    def from_hf_config(cls, config: dict) -> "BaseArchitecture":
        """The same facts from a Hugging Face ``config.json`` (its model_type names the
        llama.cpp architecture for the families kbloop packages: qwen2, llama)."""
        heads = int(config["num_attention_heads"])
        return cls(config["model_type"], int(config["num_hidden_layers"]), heads,
                   int(config.get("num_key_value_heads") or heads))


def gguf_path(adapter_dir: Path) -> Path:
    return Path(adapter_dir) / GGUF_NAME


def ensure_gguf(adapter_dir: Path, base: BaseArchitecture) -> Path:
    """The adapter's GGUF LoRA, written from its safetensors the first time it is asked for."""
    adapter_dir = Path(adapter_dir)
    target = gguf_path(adapter_dir)
    source = adapter_dir / "adapter_model.safetensors"
    if target.is_file() and (not source.is_file() or target.stat().st_mtime >= source.stat().st_mtime):
        return target
    if not source.is_file():
        raise AdapterConversionError(f"{adapter_dir} holds no adapter_model.safetensors")
    tmp = target.with_name(f".{GGUF_NAME}.{os.getpid()}.tmp")
    try:
        write_gguf(adapter_dir, base, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_gguf(adapter_dir: Path, base: BaseArchitecture, out: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    config = _lora_config(adapter_dir)
    try:
        arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == base.name)
    except StopIteration:
        raise AdapterConversionError(f"llama.cpp does not know the architecture {base.name!r}") from None
    names = gguf.get_tensor_name_map(arch, base.block_count)
    writer = gguf.GGUFWriter(str(out), base.name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    written = 0
    for key, tensor in sorted(load_file(str(adapter_dir / "adapter_model.safetensors")).items()):
        match = PEFT_TENSOR.match(key)
        if match is None:
            raise AdapterConversionError(f"{adapter_dir.name}: unexpected tensor {key!r} (only LoRA A/B are supported)")
        base_name = match["base"] + ".weight"
        gguf_name = names.get_name(base_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise AdapterConversionError(f"{adapter_dir.name}: no llama.cpp tensor for {base_name!r}")
        if match["which"] == "B" and base.name == "llama":
            tensor = _rope_permute(tensor, base, base_name)
        suffix = "lora_a" if match["which"] == "A" else "lora_b"
        writer.add_tensor(f"{gguf_name}.{suffix}", tensor.astype("float32"))
        written += 1
    if not written:
        raise AdapterConversionError(f"{adapter_dir.name}: the adapter holds no tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _lora_config(adapter_dir: Path) -> dict:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterConversionError(f"{adapter_dir.name}: unreadable adapter_config.json ({exc})") from None
    # One alpha and one rank for every layer: that is all a GGUF LoRA can say.
    unsupported = [option for option in ("use_dora", "use_rslora", "alpha_pattern", "rank_pattern")
                   if config.get(option)]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise AdapterConversionError(
            f"{adapter_dir.name}: llama.cpp applies plain LoRA only, not {unsupported or config.get('peft_type')}")
    return config


def _rope_permute(tensor, base: BaseArchitecture, base_name: str):
    """llama.cpp's converter reorders the rows of llama's q and k projections (its rotary
    embedding pairs dimensions differently); a LoRA B matrix writes into those rows."""
    if base_name.endswith("q_proj.weight"):
        heads = base.head_count
    elif base_name.endswith("k_proj.weight"):
        heads = base.head_count_kv
    else:
        return tensor
    rows = tensor.shape[0]
    return (tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:])
            .swapaxes(1, 2).reshape(tensor.shape))
