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
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

from darkknowledge.errors import UserError


def setting(
    default: Any = ...,
    description: str = "",
    *,
    affects_result: bool = True,
    resumable: bool = False,
    describes_data: bool = False,
    **constraints: Any,
) -> Any:
    """A config field and its policy, declared once: ``affects_result`` — whether the value changes
    a run's result (False: left out of a stage's identity); ``resumable`` — whether it may differ
    when ``--resume`` continues a run; ``describes_data`` — whether it says which data a model
    was trained on (what ``distill`` inherits from a teacher's checkpoint). Every list of such
    keys is derived from these flags."""
    extra: dict[str, Any] = {"affects_result": affects_result, "resumable": resumable, "describes_data": describes_data}
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class _Strict(BaseModel):
    # no setting of a run makes sense as inf or nan (lr, weight decay, gamma, warm-up, ...)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    name: str = setting(
        "digits",
        description="Dataset name (see `darkknowledge datasets`). `digits` is offline and bundled.",
        describes_data=True,
    )
    root: str | None = setting(
        None, description="Directory holding the dataset files; default ./data/<name>.", describes_data=True
    )
    download: bool = setting(
        False, description="Download the official archive (with checksum) if files are missing.", describes_data=True
    )
    classes: list[int] | None = setting(
        None, description="Keep only these class ids (relabelled 0..k-1 in this order).", describes_data=True
    )
    train_per_class: int | None = setting(
        None,
        ge=1,
        description="Deterministic seeded subset: at most this many training images per class.",
        describes_data=True,
    )
    test_per_class: int | None = setting(
        None, ge=1, description="Deterministic seeded subset of the evaluation split per class.", describes_data=True
    )
    val_per_class: int | None = setting(
        None,
        ge=1,
        description="Hold this many training images per class out as a validation split (seeded by subset_seed): "
        "best.pt and model selection then use it, and the test split is evaluated only after training.",
        describes_data=True,
    )
    image_size: int | None = setting(
        None, ge=4, description="Resize images to this square size (e.g. 16 for fast CPU runs).", describes_data=True
    )
    subset_seed: int = setting(
        0, description="Seed of the per-class subsets (independent of the training seed).", describes_data=True
    )
    batch_size: int = setting(64, ge=1, description="Training batch size (per process).")
    eval_batch_size: int = setting(512, ge=1, description="Evaluation batch size.")
    augment: bool = setting(
        True, description="Random crop with padding + flip (dataset defaults) on the training device."
    )
    stream: bool = setting(
        False,
        description="Stream full-resolution images: decode lazily in DataLoader workers (imagenet, imagefolder, "
        "webdataset shards) instead of decoding the dataset into memory; training views are RandomResizedCrop + flip.",
        describes_data=True,
    )
    crop_size: int = setting(
        224, ge=8, description="Streaming: side of the square training/evaluation crop in pixels.", describes_data=True
    )
    resize_size: int = setting(
        256,
        ge=8,
        description="Streaming: evaluation resizes the shorter side to this, then takes the centre crop_size square.",
        describes_data=True,
    )
    decoder: Literal["auto", "pil", "simplejpeg"] = setting(
        "auto", description="Streaming: JPEG decoder; auto picks simplejpeg where installed, else Pillow (draft)."
    )
    workers: int = setting(
        2,
        ge=0,
        description="Streaming: DataLoader worker processes decoding images (0: in the training process).",
        affects_result=False,
        resumable=True,
    )
    bad_files: Literal["error", "skip"] = setting(
        "error",
        description="Streaming: an unreadable image, folder or shard member stops the run with an error naming it "
        "(error), or is left out and counted (skip).",
    )
    context: int = setting(
        256,
        "Text: tokens per training window (the model sees `context` tokens, predicts the next).",
        ge=1,
        describes_data=True,
    )
    tokenizer: str = setting(
        "bpe",
        "Text: `bpe` (a byte-level BPE trained on the training split, cached beside the tokens), or a Hugging "
        "Face tokenizer directory or GGUF file (a pretrained teacher's: teacher and student must share it).",
        describes_data=True,
    )
    vocab_size: int = setting(4096, "Text: vocabulary of the trained BPE.", ge=257, describes_data=True)
    text_field: str = setting(
        "text", "Text: the field of a JSON-lines corpus that holds the text.", describes_data=True
    )
    max_bytes: int | None = setting(
        None,
        "Text: keep the first documents (sorted by name) up to this many bytes (small runs).",
        ge=1,
        describes_data=True,
    )
    packing: Literal["concat", "document"] = setting(
        "concat",
        "Text: windows run across document boundaries (concat, separated by the separator token) or stay inside "
        "one document (document, padded; padding is never a target).",
        describes_data=True,
    )


class ModelConfig(_Strict):
    name: str = setting("resnet8", description="Architecture of the model being trained (see `darkknowledge models`).")
    init: str | None = setting(
        None,
        description="Start from the model weights of this checkpoint (a darkknowledge best.pt/last.pt of the same architecture) "
        "instead of a random initialisation: fine-tuning, teacher-assistant chains, teacher adaptation.",
    )


_FOLD_BATCHNORM = (
    "Fold the frozen teacher's BatchNorms into its convolutions (same outputs up to float rounding; faster)."
)


class _TeacherBase(_Strict):
    @property
    def checkpoint_path(self) -> str | None:
        """The checkpoint whose weights this teacher is (or was cached from), if any."""
        return getattr(self, "checkpoint", None)

    @property
    def pretrained_source(self) -> tuple[str, str] | None:
        """``(kind, path)`` of the pretrained language model this teacher is (or was cached from):
        kind ``hf`` (a Hugging Face directory) or ``gguf`` (a GGUF file); None for other teachers."""
        for kind in ("hf", "gguf"):
            path = getattr(self, kind, None)
            if path:
                return kind, str(path)
        return None


class NoTeacher(_TeacherBase):
    """No teacher (``method.name=ce``, or a method that needs none)."""

    kind: Literal["none"] = setting("none", "No teacher.")


class CheckpointTeacher(_TeacherBase):
    """A live teacher: a darkknowledge checkpoint, run frozen every step."""

    kind: Literal["checkpoint"] = setting("checkpoint", "A live teacher from a darkknowledge checkpoint.")
    checkpoint: str = setting(
        description="Path to the teacher's checkpoint (a `best.pt`/`last.pt` of a darkknowledge run)."
    )
    fold_batchnorm: bool = setting(True, _FOLD_BATCHNORM)


class ModuleTeacher(_TeacherBase):
    """A live teacher built by Python code: any ``nn.Module`` returning ``(B, C)`` logits."""

    kind: Literal["module"] = setting("module", "A live teacher built by a Python factory.")
    module: str = setting(
        description="`package.module:factory`: a callable (importable, no arguments) returning the teacher nn.Module."
    )
    fold_batchnorm: bool = setting(True, _FOLD_BATCHNORM)


class CacheTeacher(_TeacherBase):
    """Stored teacher outputs (``darkknowledge cache build``) replayed instead of a live teacher."""

    kind: Literal["cache"] = setting("cache", "Replay a teacher-output cache.")
    cache: str = setting(description="Path to the teacher-output cache directory.")
    checkpoint: str | None = setting(
        None,
        "The teacher the cache was built from: the cache is refused if it holds another teacher's outputs; "
        "needed with `build`.",
    )
    build: bool = setting(
        False,
        "Build the cache from `checkpoint` first when it does not exist (otherwise a missing cache is an error).",
        affects_result=False,
        resumable=True,
    )
    views: int = setting(8, "Augmentation views per sample stored when the cache is built.", ge=1)
    view_seed: int = setting(
        0, "Seed of the cached augmentation views (shared by all student seeds, so one cache serves them all)."
    )
    fold_batchnorm: bool = setting(True, _FOLD_BATCHNORM + " (while building the cache)")
    topk: int = setting(
        64,
        "Top-k caches (language models, streamed images): teacher logits kept per token or view when the cache is "
        "built, with the log-sum-exp of all classes so the missing mass is known (in-memory image caches keep all).",
        ge=1,
    )
    missing_mass: Literal["uniform", "ignore"] = setting(
        "uniform",
        "Language models: the vocabulary outside a token's cached top-k gets the missing probability spread "
        "uniformly, or none (renormalised over the top-k).",
    )
    hf: str | None = setting(
        None,
        "Language models: a pretrained teacher (Hugging Face directory) the cache was built from, instead of "
        "`checkpoint`; `data.tokenizer` must name the same directory.",
    )
    gguf: str | None = setting(
        None,
        "Language models: a pretrained teacher (GGUF file) the cache was built from, instead of `checkpoint`; "
        "`data.tokenizer` must name the same file.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CacheTeacher:
        given = [name for name in ("checkpoint", "hf", "gguf") if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"give the teacher the cache was built from once: {' and '.join(given)} are both set")
        return self


class HFTeacher(_TeacherBase):
    """A pretrained causal language model: a Hugging Face model directory (config + safetensors)."""

    kind: Literal["hf"] = setting("hf", "A pretrained language model from a Hugging Face directory.")
    hf: str = setting(description="The model directory; `data.tokenizer` must name the same directory.")


class GGUFTeacher(_TeacherBase):
    """A pretrained causal language model from a GGUF file (de-quantised to fp32 on load)."""

    kind: Literal["gguf"] = setting("gguf", "A pretrained language model from a GGUF file.")
    gguf: str = setting(description="The .gguf file; `data.tokenizer` must name the same file.")


TeacherConfig = Annotated[
    NoTeacher | CheckpointTeacher | ModuleTeacher | CacheTeacher | HFTeacher | GGUFTeacher,
    Field(discriminator="kind"),
]
TEACHER_KINDS: dict[str, type[_TeacherBase]] = {
    "none": NoTeacher,
    "checkpoint": CheckpointTeacher,
    "module": ModuleTeacher,
    "cache": CacheTeacher,
    "hf": HFTeacher,
    "gguf": GGUFTeacher,
}
# the flat teacher section of earlier versions: name -> (name now, value that meant "not set")
_LEGACY_TEACHER_KEYS = {"cache_views": ("views", 8), "cache_view_seed": ("view_seed", 0)}


def _teacher_section(raw: Any) -> Any:
    """The teacher section with its ``kind`` (named, or told by the one source given: a cache, a
    module or a checkpoint) and keys of the former flat section renamed."""
    if not isinstance(raw, dict):
        return raw
    section = {k: v for k, v in raw.items() if v is not None}
    for old, (new, unset) in _LEGACY_TEACHER_KEYS.items():
        if old in section:
            value = section.pop(old)
            if value != unset or section.get("cache"):
                section.setdefault(new, value)
    if "kind" not in section:
        if section.get("cache"):
            section["kind"] = "cache"
        elif section.get("module"):
            section["kind"] = "module"
        elif section.get("hf"):
            section["kind"] = "hf"
        elif section.get("gguf"):
            section["kind"] = "gguf"
        elif section.get("checkpoint"):
            section["kind"] = "checkpoint"
        else:
            section["kind"] = "none"
            section.pop("fold_batchnorm", None)  # a default of the former flat section
            section.pop("checkpoint", None)
    return section


class MethodConfig(BaseModel):
    """``name`` plus the method's own hyperparameters, flat (validated by the method)."""

    model_config = ConfigDict(extra="allow")
    name: str = setting(
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
    epochs: int = setting(240, "Number of training epochs (a resumed run may be given more).", ge=1, resumable=True)
    lr: float = setting(0.05, gt=0, description="Base learning rate of SGD.")
    momentum: float = setting(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = setting(False, description="Use Nesterov momentum.")
    weight_decay: float = setting(5e-4, ge=0, description="L2 weight decay.")
    schedule: Literal["multistep", "cosine", "constant"] = setting(
        "multistep", description="Learning-rate schedule after warm-up."
    )
    milestones: list[int] = setting(
        [150, 180, 210], description="multistep: epochs (0-indexed starts) at which lr is multiplied by `gamma`."
    )
    gamma: float = setting(0.1, gt=0, description="multistep: decay factor.")
    min_lr: float = setting(0.0, ge=0, description="cosine: final learning rate.")
    warmup_epochs: float = setting(
        0.0, ge=0, description="Linear warm-up from 0 to `lr` over this many epochs (per step)."
    )
    optimizer: Literal["sgd", "adamw"] = setting(
        "sgd", "SGD with momentum (images), or AdamW (language models: decoupled weight decay, `betas`)."
    )
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW: exponential decay rates of the moment estimates.")
    grad_clip: float | None = setting(
        None, "Clip the global gradient norm to this value before each step (None: no clipping).", gt=0
    )


class EngineConfig(_Strict):
    device: str = setting("cpu", "Torch device, e.g. `cpu`, `cuda`, `cuda:1`.", resumable=True)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto",
        description="Autocast precision of forward passes (weights and optimiser stay fp32); `auto` = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32; `fp16` (CUDA only) adds a gradient scaler.",
    )
    channels_last: bool = setting(True, description="Use channels_last memory format for images and conv weights.")
    threads: int | None = setting(
        None, "torch intra-op threads; default: torch's choice.", ge=1, affects_result=False, resumable=True
    )
    deterministic: bool = setting(
        False, description="torch.use_deterministic_algorithms (slower, bit-reproducible where supported)."
    )
    progress: bool = setting(
        True, "Show a progress bar (one line per epoch is printed either way).", affects_result=False, resumable=True
    )
    tensorboard: bool = setting(
        False,
        "Also write TensorBoard event files to <run_dir>/tensorboard (needs the `tensorboard` package).",
        affects_result=False,
        resumable=True,
    )
    nonfinite: Literal["stop", "skip"] = setting(
        "stop",
        description="A non-finite loss: `stop` the run naming epoch, step and loss terms, or `skip` the batch (counted per epoch as `nonfinite_skipped`).",
    )
    keep_epochs: list[int] = setting(
        [],
        "Also keep a checkpoint `epoch-E.pt` after each of these epochs (1-based): early-stopped teachers (ESKD), "
        "teacher snapshots.",
        resumable=True,
    )
    eval_every: int = setting(1, ge=1, description="Evaluate every N epochs (and always after the last).")
    save_every: int = setting(1, ge=1, description="Write last.pt every N epochs (and always after the last).")
    compile: bool = setting(
        False,
        "Compile the student's training forward and backward with torch.compile (inductor; needs a C++ compiler on "
        "a CPU, triton on CUDA); compilation takes tens of seconds at the first step.",
        affects_result=False,
        resumable=True,
    )
    compile_teacher: bool = setting(
        False,
        "Compile a live teacher's forward with torch.compile and inductor's freezing (its weights become constants; "
        "needs a C++ compiler on a CPU, triton on CUDA); seconds of compilation at the first batch.",
        affects_result=False,
        resumable=True,
    )
    fused_optimizer: bool = setting(
        True,
        "Use torch's fused SGD kernel where it has one (CPU, CUDA); false: the foreach implementation.",
        affects_result=False,
        resumable=True,
    )
    fused_bn_relu: bool = setting(
        True,
        "On a CPU, training-mode BatchNorm + residual addition + ReLU in channels_last as one C kernel (ResNets, "
        "WRNs, VGGs, small CNNs; built by the system's C compiler at first use and cached; torch's operators where "
        "it cannot be built); false: torch's operators.",
        affects_result=False,
        resumable=True,
    )
    sample_tokens: int = setting(
        32,
        "Language models: after each evaluation print a greedy continuation of this many tokens of the start "
        "of the first validation (or test) window; 0: none.",
        ge=0,
        affects_result=False,
        resumable=True,
    )
    loss_chunk_tokens: int | None = setting(
        None,
        "Language models: tokens per group of the distillation loss, which never holds more than one group's "
        "full-vocabulary probabilities (smaller: less memory, more steps); default: the library's "
        '(docs/methods.md, "Language models").',
        ge=1,
        affects_result=False,
        resumable=True,
    )
    finite_check_every: int = setting(
        20,
        "With nonfinite=stop: test the loss for inf/nan on the host every N steps and at the end of each epoch "
        "(one device sync each; the run still stops before any checkpoint of non-finite weights). nonfinite=skip "
        "checks every step.",
        ge=1,
        affects_result=False,
        resumable=True,
    )


class RunConfig(_Strict):
    name: str | None = setting(
        None,
        "Run name; the run directory is <output_dir>/<name> (default: <model>-<method>-s<seed>). No path separators.",
        affects_result=False,
    )
    output_dir: str = setting("runs", "Parent directory of run directories.", affects_result=False, resumable=True)
    seed: int = Field(0, description="Seed of initialisation, data order and augmentation.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and batching.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model being trained.")
    teacher: TeacherConfig = Field(
        default_factory=NoTeacher, description="Teacher signal: none, a checkpoint, a module or a cache (`kind`)."
    )
    method: MethodConfig = Field(
        default_factory=MethodConfig, description="Loss / distillation method and its hyperparameters."
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedule.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Device, precision and logging.")

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_kind(cls, raw: Any) -> Any:
        return _teacher_section(raw)

    @model_validator(mode="after")
    def _kept_epochs_exist(self) -> RunConfig:
        bad = [e for e in self.engine.keep_epochs if not 1 <= e <= self.optim.epochs]
        if bad:
            raise ValueError(
                f"engine.keep_epochs: epoch {bad[0]} is not an epoch of this run (1..{self.optim.epochs}, 1-based)"
            )
        return self

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
# setting policies: every list is derived from the fields' declarations (``setting``)


def _policy(field: Any, flag: str) -> bool:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return bool(extra.get(flag, {"affects_result": True, "resumable": False, "describes_data": False}[flag]))


def _section_model(model: type[BaseModel], name: str, value: Any) -> type[BaseModel] | None:
    """The pydantic model of section ``name`` holding ``value`` (the teacher variant by its kind)."""
    if model is RunConfig and name == "teacher":
        return TEACHER_KINDS.get(value.get("kind", "none")) if isinstance(value, dict) else None
    annotation = model.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def drop_settings(config: dict[str, Any], flag: str, value: bool, model: type[BaseModel] = RunConfig) -> dict[str, Any]:
    """A copy of a dumped config without the settings whose policy ``flag`` is ``value``
    (``affects_result``/False: what a stage's identity leaves out; ``resumable``/True: what may change on resume)."""
    out: dict[str, Any] = {}
    for name, item in config.items():
        field = model.model_fields.get(name)
        if field is None:  # a method's own parameter: always part of the result
            out[name] = copy.deepcopy(item)
            continue
        section = _section_model(model, name, item)
        if section is not None and isinstance(item, dict):
            out[name] = drop_settings(item, flag, value, section)
        elif _policy(field, flag) != value:
            out[name] = copy.deepcopy(item)
    return out


def settings_with(flag: str, value: bool) -> list[str]:
    """Dotted keys whose policy ``flag`` is ``value`` (for messages and docs)."""
    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            if model is RunConfig and name == "teacher":
                for kind, variant in TEACHER_KINDS.items():
                    walk(variant, f"teacher[{kind}].")
                continue
            section = _section_model(model, name, {})
            if section is not None:
                walk(section, f"{key}.")
            elif _policy(field, flag) == value:
                keys.append(key)

    walk(RunConfig, "")
    return keys


def dataset_keys() -> list[str]:
    """The ``data`` keys that say which data a model was trained on (not how it was batched)."""
    return [name for name, field in DataConfig.model_fields.items() if _policy(field, "describes_data")]


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a dumped run config that determine its result."""
    return drop_settings(config, "affects_result", False)


def resume_comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a dumped run config that a resumed run must keep."""
    return drop_settings(config, "resumable", True)


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
    """Whether ``keys`` name a ``str`` (or ``str | None``) field of :class:`RunConfig` (of any teacher kind)."""
    if keys[:1] == ["teacher"] and len(keys) == 2:
        return any(
            keys[1] in variant.model_fields and variant.model_fields[keys[1]].annotation in (str, str | None)
            for variant in TEACHER_KINDS.values()
        )
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
        parts = list(err["loc"])
        if len(parts) > 1 and parts[0] == "teacher" and parts[1] in TEACHER_KINDS:
            del parts[1]  # the union's tag: the user wrote teacher.<key>
        loc = ".".join(str(p) for p in parts)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise UserError(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}") from None


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
    sections: list[tuple[str, str, type[BaseModel]]] = [("top level", "", RunConfig)]
    for name in ("data", "model"):
        sections.append((name, name, RunConfig.model_fields[name].annotation))  # type: ignore[arg-type]
    for kind, variant in TEACHER_KINDS.items():
        sections.append((f"teacher`, `kind: {kind}", "teacher", variant))
    for name in ("optim", "engine"):
        sections.append((name, name, RunConfig.model_fields[name].annotation))  # type: ignore[arg-type]
    lines += [
        "Policy: *not in identity* — the setting does not change a run's result (left out of a sweep stage's key);",
        "*resumable* — it may differ when `--resume` continues a run.",
        "",
    ]
    for title, prefix, model in sections:
        lines += [f"## `{title}`", "", "| key | type | default | policy | description |", "|---|---|---|---|---|"]
        for fname, field in model.model_fields.items():
            if model is RunConfig and fname in ("data", "model", "teacher", "method", "optim", "engine"):
                continue
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            default = field.get_default(call_default_factory=True)
            key = f"{prefix}.{fname}" if prefix else fname
            policy = ", ".join(
                word
                for word, on in (
                    ("not in identity", not _policy(field, "affects_result")),
                    ("resumable", _policy(field, "resumable")),
                )
                if on
            )
            default_text = "required" if default is PydanticUndefined else f"`{default!r}`"
            lines.append(f"| `{key}` | {_md(ann)} | {default_text} | {policy} | {_md(field.description)} |")
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
