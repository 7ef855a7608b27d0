"""One training loop for teachers (``method.name=ce``) and students (any method).

Per step::

    batch  = loader (in-memory uint8 -> batched crop/flip/normalise on device)
    z_s    = student(batch.images)                 # autocast bf16 | fp32
    z_t    = teacher_signal(batch)                 # live (inference_mode) or cached
    terms  = method(z_s, z_t, batch.targets, ctx)  # named, weighted loss terms
    sum(terms).backward(); SGD step

The trainer never looks at the method's name. Run directory::

    config.yaml  resolved configuration
    metrics.jsonl one line per epoch: lr, every loss term, method stats, eval metrics
    summary.json  final/best metrics, timings
    last.pt best.pt  checkpoints (atomic writes, weights_only-safe)
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import darkknowledge.engine.distributed as distributed
from darkknowledge.config import RunConfig, settings_with
from darkknowledge.data.loaders import evaluation_batches
from darkknowledge.data.splits import Splits
from darkknowledge.engine.checkpoint import FORMAT, VERSION, atomic_torch_save, load_checkpoint, spec_to_dict
from darkknowledge.engine.compile import compile_module
from darkknowledge.engine.evaluation import make_evaluator
from darkknowledge.engine.factory import RunParts, build_parts
from darkknowledge.engine.loggers import build_loggers, json_safe, print_epoch
from darkknowledge.engine.optim import build_optimizer
from darkknowledge.engine.precision import autocast, configure_backends, grad_scaler
from darkknowledge.engine.rundir import comparable_config, read_history, remove_stale_temporaries, saved_config
from darkknowledge.engine.runlock import RunLock
from darkknowledge.engine.schedule import learning_rate
from darkknowledge.engine.seeding import rng_state, set_rng_state
from darkknowledge.engine.teacher import TeacherSignal
from darkknowledge.errors import UserError
from darkknowledge.fileio import atomic_write_json, atomic_write_text
from darkknowledge.methods import SetupContext, StepContext


class Trainer:
    """Train ``parts.model`` with ``parts.method`` (optionally against ``parts.teacher``);
    the parts come from :func:`darkknowledge.engine.factory.build_parts`."""

    def __init__(self, parts: RunParts, *, run_dir: str | Path | None = None):
        from darkknowledge.models import count_parameters

        cfg = self.cfg = parts.cfg
        self.parts = parts
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
        self.rank, self.world_size, self.device, self.precision = (
            parts.rank,
            parts.world_size,
            parts.device,
            parts.precision,
        )
        self.train_set, self.val_set, self.test_set = parts.splits
        self.spec = parts.spec
        # model selection (best.pt) uses the validation split when there is one, else the test split
        self.selection = "val" if self.val_set is not None else "test"
        self.model, self.method, self.teacher, self.loader = parts.model, parts.method, parts.teacher, parts.loader
        self.num_params = count_parameters(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad] + [
            p for p in self.method.parameters() if p.requires_grad
        ]
        self._trained_params = params
        self.optimizer = build_optimizer(params, cfg.optim, self.device, cfg.engine.fused_optimizer)
        # the student only is data-parallel; the teacher is never wrapped (it has no gradients)
        self.train_model = distributed.wrap(self.model, self.device) if self.world_size > 1 else self.model
        self.start_epoch = 0
        self.best_top1 = -math.inf  # the best selection score so far (checkpoint key kept as it was)
        self.history: list[dict[str, Any]] = []
        self.evaluator = make_evaluator(
            {"val": self.val_set, "test": self.test_set},
            self.teacher,
            cfg.data.eval_batch_size,
            self.device,
            self.precision,
            cfg.engine.channels_last,
            cfg.engine.sample_tokens,
        )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        cpu = lambda module: {k: v.detach().cpu() for k, v in module.state_dict().items()}  # noqa: E731
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_name": self.cfg.model.name,
            "num_classes": self.spec.num_classes,
            "in_channels": self.spec.in_channels,
            "num_params": self.num_params,
            "data": spec_to_dict(self.spec),
            "model": cpu(self.model),
            "optimizer": self.optimizer.state_dict(),
            "method": cpu(self.method),
            "epoch": epoch,
            "metrics": metrics,
            "best_top1": self.best_top1,
            "config": self.cfg.to_yaml(),
            "rng": rng_state(),
        }

    def _resume_source(self, resume: bool) -> Path | None:
        """The checkpoint to continue from (read-only checks, before anything is written)."""
        last, best = self.run_dir / "last.pt", self.run_dir / "best.pt"
        if not resume:
            if last.exists() or best.exists():
                raise UserError(
                    f"run directory {self.run_dir} already holds a run; pass --resume to continue it or choose another name="
                )
            return None
        if last.is_file():
            source = last
        elif best.is_file():
            print(f"warning: {last} is missing; resuming from best.pt (its epoch, not the last one)", file=sys.stderr)
            source = best
        else:
            raise UserError(
                f"--resume: no checkpoint in {self.run_dir} (no last.pt or best.pt); start the run without --resume"
            )
        ckpt = load_checkpoint(source, map_location=self.device)
        if comparable_config(saved_config(self.run_dir, ckpt)) != comparable_config(self.cfg.to_yaml()):
            raise UserError(
                f"--resume: the configuration differs from the one saved in {self.run_dir}/config.yaml "
                f"(only {', '.join(k for k in settings_with('resumable', True) if '[' not in k)} may change)"
            )
        self._resume_checkpoint: dict[str, Any] | None = ckpt
        return source

    def _prepare_run_dir(self, source: Path | None) -> None:
        if source is not None:
            ckpt, self._resume_checkpoint = self._resume_checkpoint, None
            assert ckpt is not None  # read by _resume_source
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.method.load_state_dict(ckpt["method"])
            set_rng_state(ckpt["rng"])
            self.start_epoch = int(ckpt["epoch"])
            self.best_top1 = float(ckpt["best_top1"])
            self.history = [h for h in read_history(self.run_dir / "metrics.jsonl") if h["epoch"] < self.start_epoch]
        elif self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            remove_stale_temporaries(self.run_dir)
            self._write_metrics()  # on a fresh start: drop lines of an attempt killed before its first checkpoint
            atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())

    def _write_metrics(self) -> None:
        if self.rank == 0:
            atomic_write_text(
                self.run_dir / "metrics.jsonl", "".join(json.dumps(json_safe(h)) + "\n" for h in self.history)
            )

    # ------------------------------------------------------------------ training
    def _setup_method(self) -> None:
        teacher = self.teacher

        def train_batches():
            batches = evaluation_batches(
                self.train_set, self.cfg.data.eval_batch_size, self.device, self.cfg.engine.channels_last
            )
            return batches if teacher is None else teacher.plain_batches(batches, self.spec)

        self.method.setup(
            SetupContext(
                num_classes=self.spec.num_classes,
                teacher_logits_fn=teacher,
                train_batches=train_batches,
                device=self.device,
                student=self.model,
            )
        )

    def _step_parts(self) -> tuple[torch.nn.Module, torch.amp.GradScaler | None]:
        """The module a training step calls (the student, data-parallel and/or compiled as
        configured) and the fp16 loss scaler; made once, at the first epoch."""
        if getattr(self, "_step_model", None) is None:
            configure_backends(self.device, self.cfg.engine.deterministic)
            model = self.train_model
            if self.cfg.engine.compile:
                model = compile_module(model, self.device)
            self._step_model: torch.nn.Module | None = model
            self._scaler = grad_scaler(self.device, self.precision)
        assert self._step_model is not None
        return self._step_model, self._scaler

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        model, scaler = self._step_parts()
        self.model.train()
        self.method.train()
        steps = len(self.loader)
        totals: dict[str, Tensor] = {}
        seen = units = 0
        unit = "images"
        bar = None
        if cfg.engine.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False, dynamic_ncols=True)
        # skip must decide per batch (a host sync per step); stop may look every N steps, since the run
        # ends before anything of this epoch is saved
        skip = cfg.engine.nonfinite == "skip"
        watch = _NonfiniteWatch(epoch, steps, cfg.engine.finite_check_every)
        t0 = time.perf_counter()
        skipped = 0
        for i, batch in enumerate(self.loader.epoch(epoch)):
            lr = learning_rate(cfg.optim, epoch, i / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            ctx = StepContext(epoch=epoch, num_epochs=cfg.optim.epochs, step_in_epoch=i, steps_per_epoch=steps)
            teacher_logits = self.teacher(batch) if self.teacher is not None else None
            with autocast(self.device, self.precision):
                student_logits = model(batch.inputs)
            terms = self.method(student_logits, teacher_logits, batch.targets, ctx)
            loss = sum(terms.values())
            if skip:
                if not distributed.all_finite(loss):
                    skipped += 1
                    if bar is not None:
                        bar.update(1)
                    continue
            else:
                watch.record(i, loss, terms)
            self.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if self.world_size > 1:
                distributed.average_gradients(self.method.parameters())
            if cfg.optim.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self._trained_params, cfg.optim.grad_clip)
            if scaler is not None:
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            n = len(batch)
            seen += n
            units += batch.units
            unit = batch.unit
            for k, v in terms.items():
                v = v.detach() * n
                totals[k] = totals[k] + v if k in totals else v
            if bar is not None:
                bar.update(1)
                if i % 20 == 0 or i == steps - 1:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        watch.check()
        if self.device.type == "cuda":  # the time of the work, not of its queueing
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if self.world_size > 1:  # every rank reports the same, global numbers
            totals = distributed.sum_across(
                {
                    **totals,
                    "__seen": torch.tensor(float(seen)),
                    "__units": torch.tensor(float(units)),
                    "__skipped": torch.tensor(float(skipped)),
                }
            )
            seen, units = int(totals.pop("__seen").item()), int(totals.pop("__units").item())
            skipped = int(totals.pop("__skipped").item())
        if seen == 0:
            raise UserError(
                f"every batch of epoch {epoch + 1} had a non-finite loss (engine.nonfinite=skip); lower optim.lr or check the data"
            )
        out = {f"loss/{k}": (v / seen).item() for k, v in totals.items()}
        out["loss/total"] = sum(out.values())
        out["lr"] = learning_rate(cfg.optim, epoch, 0.0)
        out["train_time_s"] = elapsed
        out[f"train_{unit}_per_s"] = units / max(elapsed, 1e-9)
        if skip:
            out["nonfinite_skipped"] = skipped
        out.update({f"method/{k}": v for k, v in self.method.epoch_stats().items()})
        return out

    def evaluate(self, split: str = "test", model: torch.nn.Module | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: the student) on the ``test`` or ``val`` split, keys ``<split>/...``."""
        return self.evaluator(model or self.model, split)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        source = self._resume_source(resume)
        with RunLock(self.run_dir) if self.rank == 0 else contextlib.nullcontext():
            return self._fit(source)

    def _fit(self, source: Path | None) -> dict[str, Any]:
        cfg = self.cfg
        self._prepare_run_dir(source)
        if self.rank == 0:
            for warning in self.method.check_schedule(cfg.optim.epochs):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        self._setup_method()
        loggers = build_loggers(self.run_dir, cfg.engine.tensorboard) if self.rank == 0 else []
        t_start = time.perf_counter()
        last_metrics: dict[str, Any] = self.history[-1] if self.history else {}
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            record: dict[str, Any] = {"epoch": epoch}
            record.update(self.train_epoch(epoch))
            final = epoch == cfg.optim.epochs - 1
            evaluated = (epoch + 1) % cfg.engine.eval_every == 0 or final
            if evaluated:
                record.update(self.evaluate(self.selection))
            if final and self.selection == "val":  # the test split is looked at once, after training
                record.update(self.evaluate("test"))
            self.history.append(record)
            last_metrics = record
            if self.rank == 0:
                for logger in loggers:
                    logger.log_epoch(record)
                # best.pt: the selection split's score (top-1; -NLL for language models), higher is better
                score = self.evaluator.selection.score(record, self.selection)
                improved = score is not None and score > self.best_top1
                if score is not None and improved:
                    self.best_top1 = score
                if (epoch + 1) % cfg.engine.save_every == 0 or final or improved:
                    if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                        raise UserError(
                            f"the weights became non-finite in epoch {epoch + 1}: training diverged; lower optim.lr "
                            "(no checkpoint was written from them)"
                        )
                    ckpt = self._checkpoint(epoch + 1, record)
                    # last.pt first: a kill between the two writes leaves a resumable run
                    if (epoch + 1) % cfg.engine.save_every == 0 or final:
                        atomic_torch_save(ckpt, self.run_dir / "last.pt")
                    if improved:
                        atomic_torch_save(ckpt, self.run_dir / "best.pt")
                if epoch + 1 in cfg.engine.keep_epochs:  # e.g. an early-stopped teacher (ESKD)
                    atomic_torch_save(self._checkpoint(epoch + 1, record), self.run_dir / f"epoch-{epoch + 1}.pt")
                print_epoch(record, cfg.optim.epochs)
                if evaluated:
                    text = self.evaluator.sample(self.model, self.selection)
                    if text is not None:
                        print(f"  sample ({self.selection}): {text}", flush=True)
        for logger in loggers:
            logger.close()
        distributed.barrier()
        summary = self.summary(last_metrics, time.perf_counter() - t_start)
        if self.rank == 0:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def _best_on_validation(self) -> dict[str, Any]:
        """Test metrics of best.pt (chosen on the validation split), with its validation metrics and epoch."""
        import copy

        path = self.run_dir / "best.pt"
        if self.selection != "val" or not path.is_file():
            return {}
        ckpt = load_checkpoint(path, map_location=self.device)
        model = copy.deepcopy(self.model)
        model.load_state_dict(ckpt["model"])
        out = self.evaluate("test", model=model)
        out.update({k: v for k, v in ckpt["metrics"].items() if k.startswith("val/")})
        return out | {"epoch": ckpt["epoch"] - 1}

    def summary(self, last: dict[str, Any], wall_s: float) -> dict[str, Any]:
        if self.selection == "val":
            best = self._best_on_validation()
        else:
            scored = [(s, h) for h in self.history if (s := self.evaluator.selection.score(h, "test")) is not None]
            record = max(scored, key=lambda sh: sh[0])[1] if scored else {}
            best = {k: v for k, v in record.items() if k.startswith("test/")} | (
                {"epoch": record["epoch"]} if record else {}
            )
        summary = {
            "run_dir": str(self.run_dir),
            "model": self.cfg.model.name,
            "num_params": self.num_params,
            "method": self.cfg.method.name,
            "dataset": self.spec.name,
            "seed": self.cfg.seed,
            "epochs": self.cfg.optim.epochs,
            "precision": self.precision,
            "teacher": self.teacher.describe() if self.teacher is not None else None,
            "selection": self.selection,
            "selection_metric": self.evaluator.selection.as_dict(),
            "final": {k: v for k, v in last.items() if k.startswith(("test/", "val/"))},
            "best": best,
            "wall_time_s": wall_s,
        }
        provenance = getattr(self.train_set, "provenance", None)  # text: the corpus and tokenizer digests
        if provenance:
            summary["data_provenance"] = provenance
        return summary


class _NonfiniteWatch:
    """Non-finite losses of one epoch (engine.nonfinite=stop), tested on the host every ``every`` steps.

    Per step it adds two small device operations and no sync: ``probe`` accumulates ``loss * 0``
    (finite exactly while every loss so far was), and the first bad step's index and loss terms
    are kept. :meth:`check` syncs once and raises naming that step; it runs again at the end of
    the epoch, before anything of it can be saved.
    """

    def __init__(self, epoch: int, steps: int, every: int):
        self.epoch, self.steps, self.every = epoch, steps, every
        self.probe: Tensor | None = None
        self.first_step: Tensor | None = None
        self.first_terms: Tensor | None = None
        self.names: list[str] = []

    def record(self, step: int, loss: Tensor, terms: dict[str, Tensor]) -> None:
        loss = loss.detach().float()
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if self.probe is None:
            self.names = list(terms)
            self.probe = torch.zeros((), device=loss.device)
            self.first_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self.first_terms = torch.zeros_like(values)
        assert self.first_step is not None and self.first_terms is not None
        new = ~torch.isfinite(loss) & (self.first_step < 0)
        self.probe = self.probe + loss * 0
        self.first_step = torch.where(new, step, self.first_step)
        self.first_terms = torch.where(new, values, self.first_terms)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        if self.probe is None or distributed.all_finite(self.probe):
            return
        assert self.first_step is not None and self.first_terms is not None
        step = int(self.first_step.item())
        values = dict(zip(self.names, self.first_terms.tolist()))
        if step < 0:  # non-finite on another rank only
            raise UserError(
                f"non-finite loss on another process in epoch {self.epoch + 1}; the run stopped, nothing of this "
                "epoch was saved; lower optim.lr or check the data"
            )
        raise UserError(_nonfinite_message(self.epoch, step, self.steps, values))


def _nonfinite_message(epoch: int, step: int, steps: int, terms: dict[str, float]) -> str:
    values = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
    return (
        f"non-finite loss at epoch {epoch + 1}, step {step + 1}/{steps} ({values}); the run stopped, nothing of this "
        "epoch was saved; lower optim.lr, check the data, or set engine.nonfinite=skip to skip such batches"
    )


def build_trainer(
    cfg: RunConfig,
    *,
    splits: Splits | None = None,
    teacher: TeacherSignal | torch.nn.Module | None = None,
    run_dir: str | Path | None = None,
) -> Trainer:
    """A trainer for ``cfg`` with its parts from the factory (``splits``/``teacher`` may be given:
    a teacher signal or an ``nn.Module``, see :func:`~darkknowledge.engine.factory.build_parts`)."""
    return Trainer(build_parts(cfg, splits=splits, teacher=teacher), run_dir=run_dir)


def train(cfg: RunConfig, resume: bool = False, **given: Any) -> dict[str, Any]:
    """Library entry point: ``darkknowledge.train(load_config(...))``."""
    return build_trainer(cfg, **given).fit(resume=resume)
