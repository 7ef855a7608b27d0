"""A stage's identity: its key and the parts it is computed from.

``key`` = sha256 of the stage's kind, its *identity config* and the identities of its
inputs (the key and output file of a producing stage, the weight digest of a given
checkpoint, or the digest of a pretrained model's weight files). The identity config holds
only the fields that change a run's result and omits every field at its default value, so
adding a defaulted setting never changes a key. A finished stage with the same key is
reused, never recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from darkknowledge.config import RunConfig, validate_config
from darkknowledge.engine.checkpoint import load_checkpoint, state_digest
from darkknowledge.errors import UserError
from darkknowledge.fileio import files_digest

# where a run config names the files it consumes: role -> (section, field); identified by inputs, not paths
INPUT_FIELDS = {
    "teacher": ("teacher", "checkpoint"),
    "cache": ("teacher", "cache"),
    "init": ("model", "init"),
    "hf": ("teacher", "hf"),  # a pretrained language model: a Hugging Face directory
    "gguf": ("teacher", "gguf"),  # or a GGUF file
}
PRETRAINED_ROLES = ("hf", "gguf")  # identified by the digest of their weight files, not a checkpoint's weights
INPUT_PLACEHOLDER = "<input>"  # an input's field in a planned config, until a job receives the path

_DIGESTS: dict[tuple[str, int, int], str] = {}
_TOKENIZER_DIGESTS: dict[str, str] = {}


def weight_digest(path: str | Path) -> str:
    """Content digest of a checkpoint's model weights (independent of file layout and path);
    remembered per (path, size, mtime) within a process."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise UserError(f"checkpoint {path} does not exist (a teacher or model.init of the sweep)") from None
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = state_digest(load_checkpoint(p)["model"])
    return _DIGESTS[memo]


def input_digest(role: str, path: str | Path) -> str:
    """The identity of a given input file: a pretrained model's weight files (``weights_digest``),
    else a checkpoint's model weights (:func:`weight_digest`)."""
    if role in PRETRAINED_ROLES:
        from darkknowledge.models.lm import weights_digest

        return weights_digest(path)
    return weight_digest(path)


def _affects_result(field: Any) -> bool:
    """Whether a config field changes a run's result, as config.py declares it (``setting(affects_result=...)``)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return bool(extra.get("affects_result", True))


def _is_tag(field: Any) -> bool:
    """A discriminator-like field (a one-value Literal): always kept, so two variants at their defaults differ."""
    from typing import Literal, get_args, get_origin

    return get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1


_INPUT_PATHS = {f"{section}.{name}" for section, name in INPUT_FIELDS.values()}


def _non_default(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        path = f"{prefix}{name}"
        if path in _INPUT_PATHS or not _affects_result(field):
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = _non_default(value, f"{path}.")
            if sub:
                out[name] = sub
        elif _is_tag(field) or field.is_required() or value != field.get_default(call_default_factory=True):
            out[name] = dumped[name]
    extra = model.__pydantic_extra__
    if extra:  # free-form parameters (a method's): defaults are those of the same declared fields without them
        base = type(model).model_validate({n: getattr(model, n) for n in type(model).model_fields})
        defaults = base.__pydantic_extra__ or {}
        out.update({k: dumped[k] for k, v in extra.items() if k not in defaults or defaults[k] != v})
    return out


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def tokenizer_digest(path: str | Path) -> str:
    """The identity of a pretrained tokenizer (``data.tokenizer``): SHA-256 of its GGUF file, or of
    the tokenizer files of a Hugging Face directory; remembered per (path, size, mtime)."""
    p = Path(path).resolve()
    files = [p] if p.is_file() else [p / name for name in _TOKENIZER_FILES if (p / name).is_file()]
    if not files:
        raise UserError(f"data.tokenizer={path}: no .gguf file or tokenizer files there (tokenizer.json, ...)")
    memo = ("tokenizer", str(p), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    key = json.dumps(memo)
    if key not in _TOKENIZER_DIGESTS:
        _TOKENIZER_DIGESTS[key] = files_digest(files)
    return _TOKENIZER_DIGESTS[key]


def identity_config(config: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """The part of a run configuration that determines its result: result-affecting fields
    that differ from their default, without the paths of consumed files (those are inputs).
    A pretrained tokenizer is identified by its files' digest, not its path."""
    cfg = config if isinstance(config, RunConfig) else validate_config(config, source="stage config")
    identity = _non_default(cfg)
    data = identity.get("data")
    if isinstance(data, dict) and data.get("tokenizer") not in (None, "bpe"):
        data["tokenizer"] = f"sha256:{tokenizer_digest(data['tokenizer'])}"
    return identity


def stage_key(kind: str, identity: dict[str, Any], inputs: dict[str, str]) -> str:
    """The key of a stage from its kind, identity config and input identities."""
    blob = json.dumps({"kind": kind, "config": identity, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
