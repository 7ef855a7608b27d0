"""Evaluating the student during training: accuracy, NLL and calibration on the
validation or test split, with agreement and rank fidelity to the teacher signal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from darkknowledge.data.base import ArrayDataset
from darkknowledge.data.loaders import evaluation_batches
from darkknowledge.engine.metrics import ClassificationMeter, collect_logits
from darkknowledge.engine.precision import autocast
from darkknowledge.engine.teacher import TeacherSignal
from darkknowledge.errors import UserError


@dataclass(frozen=True)
class Selection:
    """The metric that chooses a run's best epoch (best.pt) and a tune's candidate."""

    metric: str  # without the split: "top1", "nll"
    higher_is_better: bool

    def score(self, record: dict[str, Any], split: str) -> float | None:
        """Higher is better: the metric, negated when lower is better (None when the record lacks it)."""
        value = record.get(f"{split}/{self.metric}")
        return None if value is None else self.score_of(float(value))

    def score_of(self, value: float) -> float:
        """Higher is better: the metric's value, negated when lower is better."""
        return value if self.higher_is_better else -value

    def value(self, score: float) -> float:
        """The metric back from a score."""
        return self.score_of(score)  # negation is its own inverse

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better}


TOP1 = Selection("top1", higher_is_better=True)
NLL = Selection("nll", higher_is_better=False)


class Evaluator:
    """``evaluator(model, split) -> {"<split>/top1": ..., ...}`` for the splits it was given."""

    def __init__(
        self,
        datasets: dict[str, ArrayDataset | None],
        teacher: TeacherSignal | None,
        batch_size: int,
        device: torch.device,
        precision: str,
        channels_last: bool,
    ):
        self.datasets = {k: v for k, v in datasets.items() if v is not None}
        self.teacher = teacher
        self.batch_size, self.device, self.precision, self.channels_last = batch_size, device, precision, channels_last
        self._teacher_logits: dict[str, Tensor | None] = {}

    selection = TOP1

    def _batches(self, split: str):
        return evaluation_batches(self.datasets[split], self.batch_size, self.device, self.channels_last)

    def __call__(self, model: nn.Module, split: str) -> dict[str, float]:
        logits, targets = collect_logits(model, self._batches(split), self.precision)
        if not bool(torch.isfinite(logits).all()):
            raise UserError(
                f"the model's outputs on the {split} split are non-finite: training diverged; "
                "lower optim.lr (nothing of this epoch was saved)"
            )
        meter = ClassificationMeter()
        meter.update(logits, targets)
        out = {f"{split}/{k}": v for k, v in meter.compute().items()}
        teacher_logits = self.teacher_logits(split)
        if teacher_logits is not None:
            out[f"{split}/teacher_agreement"] = (
                100.0 * logits.argmax(1).eq(teacher_logits.argmax(1)).float().mean().item()
            )
            if logits.shape[1] > 2:  # with one non-target class there is no ranking
                from darkknowledge.diagnostics.ranks import rank_fidelity

                out[f"{split}/rank_fidelity"] = float(rank_fidelity(logits, teacher_logits, targets))
        return out

    def sample(self, model: nn.Module, split: str) -> str | None:
        """A generated text sample (language models only)."""
        return None

    def teacher_logits(self, split: str) -> Tensor | None:
        """The teacher signal's logits on a split (asked once; None when it has none, e.g. a cache without them)."""
        if self.teacher is None:
            return None
        if split not in self._teacher_logits:
            self._teacher_logits[split] = self.teacher.eval_logits(self.datasets[split], self._batches(split))
        return self._teacher_logits[split]


class TokenEvaluator:
    """Next-token metrics of a language model on the ``val`` or ``test`` token windows: NLL per
    token, perplexity, bits per byte (over the split's UTF-8 bytes, comparable across tokenizers),
    next-token top-1 and agreement with the teacher, computed batch by batch (no ``[N, V]`` buffer)."""

    def __init__(
        self,
        datasets: dict[str, Any],
        teacher: TeacherSignal | None,
        batch_size: int,
        device: torch.device,
        precision: str,
        sample_tokens: int = 0,
    ):
        self.datasets = {k: v for k, v in datasets.items() if v is not None}
        self.teacher, self.batch_size, self.device, self.precision = teacher, batch_size, device, precision
        self.sample_tokens = sample_tokens

    @torch.no_grad()
    def sample(self, model: nn.Module, split: str) -> str | None:
        """``prompt -> continuation``: the first quarter of the split's first window (at most 32
        tokens) and ``sample_tokens`` tokens generated greedily after it (None: no sample asked,
        or no tokenizer to decode with)."""
        windows = self.datasets.get(split)
        decode = getattr(windows, "decode", None)
        if not self.sample_tokens or windows is None or decode is None or len(windows) == 0:
            return None
        tokens, mask = windows.rows(torch.zeros(1, dtype=torch.long))
        length = int(mask.sum())
        prompt_length = max(1, min(32, length // 4))
        ids = tokens[:, :prompt_length].to(self.device)
        was_training = model.training
        model.eval()
        steps = min(self.sample_tokens, windows.context - prompt_length)
        with torch.inference_mode(), autocast(self.device, self.precision):
            for _ in range(steps):
                ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        model.train(was_training)
        prompt, continuation = ids[0, :prompt_length].tolist(), ids[0, prompt_length:].tolist()
        return f"{decode(prompt)!r} -> {decode(continuation)!r}"

    selection = NLL  # next-token top-1 is too coarse to choose a language model's epoch

    @torch.no_grad()
    def __call__(self, model: nn.Module, split: str) -> dict[str, float]:
        from darkknowledge.data.loaders import evaluation_batches
        from darkknowledge.data.tokens import bits_per_byte

        windows = self.datasets[split]
        was_training = model.training
        model.eval()
        nats = torch.zeros((), dtype=torch.float64)
        tokens = correct = agree = 0
        with torch.inference_mode():
            for batch in evaluation_batches(windows, self.batch_size, self.device):
                with autocast(self.device, self.precision):
                    logits = model(batch.inputs)
                logits = logits.float()
                targets, mask = batch.tokens[:, 1:], batch.mask
                logp = torch.log_softmax(logits, dim=-1)
                nats += -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[mask].double().sum().cpu()
                predicted = logits.argmax(-1)
                correct += int(predicted.eq(targets)[mask].sum())
                tokens += int(mask.sum())
                if self.teacher is not None and self.teacher.answers_any_input:
                    agree += int(self.teacher(batch).argmax(-1).eq(predicted)[mask].sum())
        model.train(was_training)
        if tokens == 0:
            raise UserError(f"the {split} split has no tokens to predict; use a larger corpus")
        nll = float(nats) / tokens
        if not math.isfinite(nll):
            raise UserError(
                f"the model's outputs on the {split} split are non-finite: training diverged; lower optim.lr"
            )
        out = {
            f"{split}/nll": nll,
            f"{split}/ppl": math.exp(min(nll, 700.0)),
            f"{split}/bpb": bits_per_byte(float(nats), windows.array.num_bytes),
            f"{split}/top1": 100.0 * correct / tokens,
        }
        if self.teacher is not None and self.teacher.answers_any_input:  # a cache holds the training windows only
            out[f"{split}/teacher_agreement"] = 100.0 * agree / tokens
        return out


def selection_of(data: Any) -> Selection:
    """The selection of a run on ``data`` (a DataConfig): its evaluator's, as :func:`make_evaluator`
    chooses it — next-token NLL over a text corpus, top-1 otherwise."""
    from darkknowledge.data.corpora import is_text

    return TokenEvaluator.selection if is_text(data) else Evaluator.selection


def make_evaluator(
    datasets: dict[str, Any],
    teacher: TeacherSignal | None,
    batch_size: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    sample_tokens: int = 0,
) -> Evaluator | TokenEvaluator:
    """The evaluator of a run's splits: classification metrics, or next-token metrics over token windows."""
    from darkknowledge.data.loaders import is_tokens

    if any(is_tokens(d) for d in datasets.values() if d is not None):
        return TokenEvaluator(datasets, teacher, batch_size, device, precision, sample_tokens)
    return Evaluator(datasets, teacher, batch_size, device, precision, channels_last)
