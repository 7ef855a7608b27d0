"""Typed, validated run configuration (pydantic), YAML files and ``key.sub=value`` overrides.

Every field carries a description; ``darkknowledge <cmd> --help`` and
``docs/config.md`` list them. Unknown keys and wrong types are errors that name the
key (``optim.lrr: unknown key``). Method hyperparameters live flat under ``method``
(``method.temperature=2``) and are validated by the method's own ``Params`` model.
"""

from __future__ import annotations

import copy
import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from darkknowledge.errors import UserError


class _Strict(BaseModel):
    # no setting of a run makes sense as inf or nan (lr, weight decay, gamma, warm-up, ...)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    name: str = Field(
        "digits", description="Dataset name (see `darkknowledge datasets`). `digits` is offline and bundled."
    )
    root: str | None = Field(None, description="Directory holding the dataset files; default ./data/<name>.")
    download: bool = Field(False, description="Download the official archive (with checksum) if files are missing.")
    classes: list[int] | None = Field(None, description="Keep only these class ids (relabelled 0..k-1 in this order).")
    train_per_class: int | None = Field(
        None, ge=1, description="Deterministic seeded subset: at most this many training images per class."
    )
    test_per_class: int | None = Field(
        None, ge=1, description="Deterministic seeded subset of the evaluation split per class."
    )
    val_per_class: int | None = Field(
        None,
        ge=1,
        description="Hold this many training images per class out as a validation split (seeded by subset_seed): "
        "best.pt and model selection then use it, and the test split is evaluated only after training.",
    )
    image_size: int | None = Field(
        None, ge=4, description="Resize images to this square size (e.g. 16 for fast CPU runs)."
    )
    subset_seed: int = Field(0, description="Seed of the per-class subsets (independent of the training seed).")
    batch_size: int = Field(64, ge=1, description="Training batch size (per process).")
    eval_batch_size: int = Field(512, ge=1, description="Evaluation batch size.")
    augment: bool = Field(
        True, description="Random crop with padding + flip (dataset defaults) on the training device."
    )


class ModelConfig(_Strict):
    name: str = Field("resnet8", description="Architecture of the model being trained (see `darkknowledge models`).")
    init: str | None = Field(
        None,
        description="Start from the model weights of this checkpoint (a darkknowledge best.pt/last.pt of the same architecture) "
        "instead of a random initialisation: fine-tuning, teacher-assistant chains, teacher adaptation.",
    )


class TeacherConfig(_Strict):
    checkpoint: str | None = Field(
        None, description="Path to the teacher's checkpoint (a `best.pt`/`last.pt` of a darkknowledge run)."
    )
    fold_batchnorm: bool = Field(
        True,
        description="Fold the frozen teacher's BatchNorms into its convolutions (same outputs up to float rounding; faster).",
    )
    cache: str | None = Field(
        None, description="Path to a teacher-output cache (`darkknowledge cache build`); replaces the live teacher."
    )
    cache_views: int = Field(
        8, ge=1, description="Augmentation views per sample stored when the cache is built on the fly."
    )
    cache_view_seed: int = Field(
        0,
        description="Seed of the cached augmentation views (shared by all student seeds, so one cache serves them all).",
    )


class MethodConfig(BaseModel):
    """``name`` plus the method's own hyperparameters, flat (validated by the method)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "ce", description="Distillation method (see `darkknowledge methods`); `ce` trains without a teacher."
    )
    _params: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _validate_params(self) -> MethodConfig:
        from darkknowledge.methods import validate_params

        params = validate_params(self.name, dict(self.__pydantic_extra__ or {}))
        self._params = params
        self.__pydantic_extra__ = params.model_dump()
        return self

    @property
    def params(self):
        """The validated ``Params`` object of the method."""
        return self._params


class OptimConfig(_Strict):
    epochs: int = Field(240, ge=1, description="Number of training epochs.")
    lr: float = Field(0.05, gt=0, description="Base learning rate of SGD.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Use Nesterov momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay.")
    schedule: Literal["multistep", "cosine", "constant"] = Field(
        "multistep", description="Learning-rate schedule after warm-up."
    )
    milestones: list[int] = Field(
        [150, 180, 210], description="multistep: epochs (0-indexed starts) at which lr is multiplied by `gamma`."
    )
    gamma: float = Field(0.1, gt=0, description="multistep: decay factor.")
    min_lr: float = Field(0.0, ge=0, description="cosine: final learning rate.")
    warmup_epochs: float = Field(
        0.0, ge=0, description="Linear warm-up from 0 to `lr` over this many epochs (per step)."
    )


class EngineConfig(_Strict):
    device: str = Field("cpu", description="Torch device, e.g. `cpu`, `cuda`, `cuda:1`.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Autocast precision of forward passes (weights and optimiser stay fp32); `auto` = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.",
    )
    channels_last: bool = Field(True, description="Use channels_last memory format for images and conv weights.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's choice.")
    deterministic: bool = Field(
        False, description="torch.use_deterministic_algorithms (slower, bit-reproducible where supported)."
    )
    progress: bool = Field(True, description="Show a progress bar (one line per epoch is printed either way).")
    tensorboard: bool = Field(
        False,
        description="Also write TensorBoard event files to <run_dir>/tensorboard (needs the `tensorboard` package).",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A non-finite loss: `stop` the run naming epoch, step and loss terms, or `skip` the batch (counted per epoch as `nonfinite_skipped`).",
    )
    keep_epochs: list[int] = Field(
        [],
        description="Also keep a checkpoint `epoch-E.pt` after each of these epochs (1-based): early-stopped teachers (ESKD), teacher snapshots.",
    )
    eval_every: int = Field(1, ge=1, description="Evaluate every N epochs (and always after the last).")
    save_every: int = Field(1, ge=1, description="Write last.pt every N epochs (and always after the last).")


class RunConfig(_Strict):
    name: str | None = Field(
        None,
        description="Run name; the run directory is <output_dir>/<name> (default: <model>-<method>-s<seed>). No path separators.",
    )
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    seed: int = Field(0, description="Seed of initialisation, data order and augmentation.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and batching.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model being trained.")
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="Teacher signal (live checkpoint or cache)."
    )
    method: MethodConfig = Field(
        default_factory=MethodConfig, description="Loss / distillation method and its hyperparameters."
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedule.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Device, precision and logging.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name):
            raise ValueError(
                f"{name!r} must be a plain directory name (no '/', not '.' or '..'); use output_dir= for the parent"
            )
        return name

    def run_name(self) -> str:
        return self.name or f"{self.model.name}-{self.method.name}-s{self.seed}"

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------
# loading


def bundled_configs() -> list[str]:
    """Names of the YAML presets shipped in the package (``darkknowledge/configs``)."""
    return sorted(p.name[:-5] for p in resources.files("darkknowledge.configs").iterdir() if p.name.endswith(".yaml"))


def read_yaml(path_or_name: str) -> dict[str, Any]:
    """A YAML file path, or the name of a bundled preset."""
    path = Path(path_or_name)
    if not path.is_file():
        bundled = resources.files("darkknowledge.configs") / f"{path_or_name.removesuffix('.yaml')}.yaml"
        if not bundled.is_file():
            raise UserError(
                f"config {path_or_name!r} not found: not a file and not a bundled preset "
                f"(presets: {', '.join(bundled_configs())})"
            )
        text = bundled.read_text()
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"config {path_or_name}: cannot read it ({exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path_or_name}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path_or_name}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> (["optim", "lr"], 0.1); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key.sub=value (e.g. optim.lr=0.1)")
    key, _, raw = text.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise UserError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def _is_text_field(keys: list[str]) -> bool:
    """Whether ``keys`` name a ``str`` (or ``str | None``) field of :class:`RunConfig`."""
    model: Any = RunConfig
    for key in keys:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
            return False
        model = model.model_fields[key].annotation
    return model in (str, str | None)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        if _is_text_field(keys) and isinstance(value, (bool, int, float, datetime.date)):
            # YAML would turn `name=001` into 1, `name=off` into False: text fields take the text
            value = text.partition("=")[2].strip()
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a :class:`RunConfig`; errors name the key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise UserError(f"{source}: {loc}: {msg}") from None


def load_config(
    config: str | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> RunConfig:
    """``base`` dict <- YAML file/preset <- ``key=value`` overrides, validated."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    if config:
        data = deep_merge(data, read_yaml(config))
    data = apply_overrides(data, overrides or [])
    return validate_config(data, source=config or "config")


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``a`` with ``b`` merged in, section by section (``b`` wins)."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _md(text: str | None) -> str:
    """Make text safe inside a markdown table cell."""
    return (text or "").replace(" | ", " or ").replace("|", "/")


def config_reference_markdown() -> str:
    """Markdown table of every config key with type, default and description
    (``docs/config.md`` is generated from this; a test keeps them in sync)."""
    from darkknowledge.methods import METHODS, describe_params

    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `src/darkknowledge/config.py` and each method's `Params`",
        "(`python -m darkknowledge.config > docs/config.md`). Set any key in a YAML file (`--config FILE`)",
        "or on the command line as `section.key=value` (values parse as YAML: `optim.milestones=[30,40]`).",
        "",
    ]
    sections = [("", RunConfig)] + [
        (name, type(getattr(RunConfig(), name))) for name in ("data", "model", "teacher", "optim", "engine")
    ]
    for prefix, model in sections:
        lines += [f"## `{prefix or 'top level'}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        for fname, field in model.model_fields.items():
            if prefix == "" and fname in ("data", "model", "teacher", "method", "optim", "engine"):
                continue
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            default = field.default if field.default_factory is None else field.default_factory()
            key = f"{prefix}.{fname}" if prefix else fname
            lines.append(f"| `{key}` | {_md(ann)} | `{default!r}` | {_md(field.description)} |")
        lines.append("")
    lines += [
        "## `method`",
        "",
        "`method.name` picks the method; its parameters sit beside it (`method.temperature=2`).",
        "",
    ]
    for name in METHODS.names():
        cls = METHODS.get(name)
        lines += [
            f"### `method.name={name}`",
            "",
            cls.summary,
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
        ]
        for pname, ptype, default, desc in describe_params(cls):
            lines.append(f"| `method.{pname}` | {_md(ptype)} | `{default!r}` | {_md(desc)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(config_reference_markdown())
