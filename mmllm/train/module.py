"""The LightningModule: what one training step of a VLM is, with per-module learning rates and freezing.

The Trainer owns devices, precision, accumulation, clipping and checkpoints; this module only says how to
compute the loss of a batch, which parameters train at which rate, and what to log.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from typing import Any, Callable, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from data_pipelines.masking import check_rate
from data_pipelines.read.shards import KINDS as SOURCE_KINDS
from mmllm.config import LMConfig, VisionConfig, VLMConfig, shape_options
from mmllm.train.distill import KDLoss, distillation_loss
from mmllm.train.group_loss import GroupDRO, group_dro_step, group_indices, group_mean_losses, reweighted_loss
from mmllm.train.loss_weighting import LossWeighting, weighted_loss
from mmllm.model.lora import LoRAConfig
from mmllm.model.vlm import is_right_padded
from mmllm.train.model_setup import build_model, check_shape_matches, load_teacher, setup_lora
from mmllm.train.muon import NSDtype
from mmllm.train.optim import Algorithm, build_optimizer, param_groups
from mmllm.train.preference import PreferenceOptions

PARTS = ("vision", "projector", "lm")
# The kinds losses are logged by (train/loss_KIND, val/loss_KIND): a causal sample's source kind, or `mlm` for every
# masked-LM sample (its loss is over hidden tokens, not comparable with next-token losses).
KINDS = (*SOURCE_KINDS, "mlm")
Part = Literal["vision", "projector", "lm"]


# The fields of LMConfig / VisionConfig a training config may replace in a preset (the vocabulary size comes from
# the tokenizer), typed from the dataclasses themselves.
LMShape = shape_options(LMConfig, "LMShape", exclude=("vocab_size",))
VisionShape = shape_options(VisionConfig, "VisionShape")
LoRAOptions = shape_options(LoRAConfig, "LoRAOptions")


class VLMModule(L.LightningModule):
    """Trains a VLM built from a preset, or continues from a model folder (`init_from`).

    Args:
        preset: named model shape (`tiny`, `small`, `base`) used when `init_from` is not given.
        lm: fields of the preset's language-model config to replace, e.g. `{n_layers: 2, dim: 64}` (see
            mmllm.config.LMConfig; head_dim is derived again unless given). Only with a preset.
        vision: fields of the preset's vision-encoder config to replace, e.g. `{n_layers: 1}` (see
            mmllm.config.VisionConfig). Only with a preset; the image size comes from the data module.
        pixel_shuffle: image patches merged per side into one image token (default: the preset's). Only with
            a preset.
        projector: `mlp` (fc1, GELU, fc2) or `linear` (one bias-free layer, Idefics3's: exportable to
            transformers) after the pixel shuffle (default: the preset's). Only with a preset.
        image_positions: `none`, or `rows_cols`: a learned row and a learned column vector added to each image
            token after the projector, so the token's content says where it sits (default: the preset's). Only
            with a preset.
        image_markup: `none`, or `idefics3` (Idefics3's tokens around each image, from the tokenizer; trained
            with `--tokens smolvlm`). Only with a preset.
        resize: how images become the tower's square: `squash`, `center_crop`, `pad`, or `idefics3` (the long side
            to `longest_edge`, then squashed, Lanczos, as transformers' Idefics3 processor). Only with a preset.
        longest_edge: resize `idefics3`'s first step, in pixels.
        image_splitting: Idefics3's tiles plus the whole image (needs resize and image_markup `idefics3`; a
            longest_edge above the image size makes tiles). Only with a preset.
        init_from: a model folder (from `mmllm build`, `mmllm export` or an earlier stage), or a training checkpoint
            (.ckpt), to start from.
        attention: `causal`, or `prefix` (bidirectional over image + prompt, causal over the answer).
        freeze: parts not trained in this stage, any of `vision`, `projector`, `lm`.
        lr: peak learning rate of every part without its own rate.
        lr_vision: peak learning rate of the vision encoder (default: lr).
        lr_projector: peak learning rate of the projector (default: lr).
        lr_lm: peak learning rate of the language model (default: lr).
        optimizer: `adamw`, or `muon`: Muon on the hidden weight matrices of every part (AdamW for embeddings,
            the output head, the patch convolution, norms and biases), at the same learning rates (see
            mmllm.train.optim).
        weight_decay: decoupled weight decay of weight matrices (not of norms, biases and embeddings).
        betas: AdamW betas.
        muon_momentum: Muon's (Nesterov) momentum.
        muon_ns_dtype: the dtype of Muon's Newton-Schulz products: `auto` (bf16 on a GPU or a CPU with bf16 matrix
            units, float32 on other CPUs, where bf16 matmuls are ~40x slower), `bfloat16` or `float32`.
        warmup_steps: linear warmup from 0 to the peak rate.
        min_lr_ratio: the cosine schedule ends at this fraction of the peak rate.
        schedule_by_time: the cosine follows whichever is further along, the steps towards trainer.max_steps or
            the training time towards trainer.max_time, so a run that max_time stops (a slower machine, a time
            budget) still ends its schedule at the low rate instead of being cut off at a high one.
        teacher: a model folder whose next-token distributions the model is also trained toward (distillation,
            mmllm.train.distill); it must share the model's tokenizer. It runs in eval mode without gradients
            (in bf16 on a GPU), and is not saved in checkpoints: a resumed run loads it again from here.
        kd_weight: the training loss is `(1 - kd_weight) * CE + kd_weight * KD` when a teacher is given.
        kd_loss: `forward_kl` (KL(teacher || student)), `reverse_kl`, or `jsd` (generalised JSD at kd_beta).
        kd_temperature: both distributions are softened by it; KD is scaled by its square.
        kd_beta: the JSD's mixing weight of the teacher, in (0, 1).
        loss_weighting: what each supervised token weighs in the training loss: `token` (the mean over tokens), `sample`
            (every sample, every packed segment, weighs the same however long its answer or caption), or `sqrt`
            (each token 1 / sqrt(its sample's tokens)); see mmllm.train.loss_weighting. Validation losses stay
            per token.
        finite_check_every: check that the training loss is finite every this many steps (default: every step on a
            CPU, every 50 on a GPU, where each check waits for the device); the error names the first bad step.
        loss_chunk: compute the loss `loss_chunk` supervised tokens at a time without the (batch, tokens, vocab)
            logits (mmllm.model.vlm.chunked_cross_entropy): for large vocabularies on a GPU, where those logits are
            gigabytes. Same loss and gradients; on a CPU the recomputed head costs more than it saves.
        activation_checkpointing: recompute each decoder and vision block's activations in the backward pass
            instead of keeping them: activation memory of one block instead of all, for ~30% more compute.
        packed_attention: how packed rows (and prefix masks) are masked: `dense`, a (B, 1, T, T) boolean mask
            through SDPA, or `flex`, flex_attention with a block mask of the same rule (mmllm.model.document_mask:
            no T x T tensor, and tiles between samples are skipped; compiled on GPUs, torch's slow reference on CPUs).
        compile: `none`, or `blocks`: torch.compile each decoder and vision block (regional compilation: blocks of
            one kind share one compiled graph, so compiling costs one block, not the model; fused norms, rotary and
            SwiGLU). The first steps wait for it.
        lora: train low-rank adapters instead of the weights (mmllm.model.lora): `{rank: 16, alpha: 32, dropout:
            0.05, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj], modules: [lm]}`;
            `base: int8 | nf4` keeps the frozen base quantised in memory (QLoRA), `rslora: true` scales by
            alpha / sqrt(rank). Every base weight is frozen; checkpoints hold only what trains and name the base
            (`init_from`), which must be a model folder.
        train_modules: with `lora`, parts trained in full beside the adapters (e.g. `[projector]`).
        mlm: the masked-LM objective of the sources that name it (`objective: mlm` in data.sources):
            `{rate: 0.15}`, the fraction of their text tokens masked (data_pipelines.masking).
        preference: preference tuning on `kind: preference` sources (mmllm.train.preference): `{loss: dpo | ipo,
            beta: 0.1, reference: frozen | adapters_off, sft_weight: 0.0}` (sft_weight: the chosen answers' NLL
            added, TRL's [sigmoid, sft]). The reference is a frozen copy of the starting model
            (`init_from`, which it needs), or under `lora` the same model with its adapters switched off (no second
            copy in memory). Logged: train/rewards_chosen, rewards_rejected, rewards_margin, preference_accuracy.
        group_dro: group DRO (Sagawa et al. 2020; mmllm.train.group_loss): `{by: group, step_size: 0.01}`: the loss
            is sum_g q_g loss_g over the groups of a sample field (as data.balance.by), q moving online toward the
            groups with the highest loss; q is logged as `group_dro/q_GROUP`. One sample per row (no packing).
        model_inputs: vocabulary size, special-token ids and image size, linked from the data module.
    """

    def __init__(
        self,
        preset: Literal["tiny", "small", "base"] = "tiny",
        lm: Optional[LMShape] = None,
        vision: Optional[VisionShape] = None,
        pixel_shuffle: Optional[int] = None,
        projector: Optional[Literal["mlp", "linear"]] = None,
        image_positions: Optional[Literal["none", "rows_cols"]] = None,
        image_markup: Optional[Literal["none", "idefics3"]] = None,
        resize: Optional[Literal["squash", "center_crop", "pad", "idefics3"]] = None,
        longest_edge: Optional[int] = None,
        image_splitting: Optional[bool] = None,
        init_from: Optional[str] = None,
        attention: Optional[Literal["causal", "prefix"]] = None,
        freeze: Optional[list[Part]] = None,
        lr: float = 1e-3,
        lr_vision: Optional[float] = None,
        lr_projector: Optional[float] = None,
        lr_lm: Optional[float] = None,
        optimizer: Algorithm = "adamw",
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        muon_momentum: float = 0.95,
        muon_ns_dtype: NSDtype = "auto",
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        schedule_by_time: bool = False,
        teacher: Optional[str] = None,
        kd_weight: float = 0.5,
        kd_loss: KDLoss = "forward_kl",
        kd_temperature: float = 1.0,
        kd_beta: float = 0.5,
        loss_weighting: LossWeighting = "token",
        finite_check_every: Optional[int] = None,
        loss_chunk: Optional[int] = None,
        activation_checkpointing: bool = False,
        packed_attention: Literal["dense", "flex"] = "dense",
        compile: Literal["none", "blocks"] = "none",
        lora: Optional[LoRAOptions] = None,
        train_modules: Optional[list[Part]] = None,
        mlm: Optional[dict[str, float]] = None,
        group_dro: Optional[GroupDRO] = None,
        preference: Optional[PreferenceOptions] = None,
        model_inputs: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        freeze = list(freeze or [])
        unknown = sorted(set(freeze) - set(PARTS))
        if unknown:
            raise ValueError(f"model.freeze names unknown parts {unknown}; choose from {list(PARTS)}")
        self.freeze = freeze
        self.group_dro = group_dro
        unknown = sorted(set(mlm or {}) - {"rate"})
        if unknown:
            raise ValueError(f"model.mlm takes {{rate}}; got {unknown}")
        self.mlm_rate = check_rate((mlm or {}).get("rate", 0.15))
        self.learning_rates = {
            "vision": lr if lr_vision is None else lr_vision,
            "projector": lr if lr_projector is None else lr_projector,
            "lm": lr if lr_lm is None else lr_lm,
        }
        layout = {"pixel_shuffle": pixel_shuffle, "projector": projector, "image_positions": image_positions,
                  "image_markup": image_markup,
                  "resize": resize, "longest_edge": longest_edge, "image_splitting": image_splitting}
        layout = {name: value for name, value in layout.items() if value is not None}
        shape = {"lm": dict(lm or {}), "vision": dict(vision or {}), **layout}
        self.model, self.tokenizer = build_model(preset, shape, init_from, attention, model_inputs or {})
        self.config: VLMConfig = self.model.config
        if init_from:  # the config file of the run that made the model may be reused, if it describes this model
            check_shape_matches(self.config, shape, init_from)
        self.preference = self._start_preference(preference, init_from, lora, train_modules, teacher, group_dro)
        both = sorted(set(freeze) & set(train_modules or []))
        if both:
            raise ValueError(f"model.freeze and model.train_modules both name {both}")
        self.lora = setup_lora(self.model, lora, train_modules, init_from) if lora is not None else None
        if self.lora is None and train_modules:
            raise ValueError("model.train_modules goes with model.lora (without adapters, model.freeze says what "
                             "does not train)")
        self.strict_loading = self.lora is None  # a LoRA checkpoint holds what trains only (on_load_checkpoint)
        # Each parameter's rank as built: FSDP hands the optimiser flat 1-D shards, whose ndim would put every
        # matrix in the no-decay group (see param_groups).
        self._param_ndims = {name: p.ndim for name, p in self.model.named_parameters()}
        self.model.set_activation_checkpointing(activation_checkpointing)
        self.model.packed_attention = packed_attention
        if compile == "blocks":
            self.model.compile_blocks()
            print("model.compile blocks: the first steps compile each block kind (tens of seconds on a CPU the first "
                  "time; later runs read the compiled code from the cache)", file=sys.stderr)
        for part in self.freeze:
            if getattr(self.model, part) is not None:  # a language model alone has no vision or projector
                getattr(self.model, part).requires_grad_(False)
        # Kept out of the module's children: not trained, not in the optimizer, not in checkpoints.
        self.__dict__["teacher"] = load_teacher(teacher, self.tokenizer, self.config, loss_chunk) if teacher else None

    # ----------------------------------------------------------------------------------------- steps
    def on_fit_start(self) -> None:
        self._start_group_losses()
        if self.teacher is not None:  # bf16 halves a GPU teacher's memory and time; the CPU keeps fp32
            self.teacher.to(self.device, torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.reference is not None:
            self.reference.to(self.device)
        if self.lora is not None and self.trainer.is_global_zero:
            from mmllm.model.lora import parameter_counts

            trainable, total = parameter_counts(self.model)  # an int8 base's weights are buffers: counted too
            c = self.lora.config
            print(f"LoRA: rank {c.rank}, alpha {c.alpha:g} on {len(self.lora.adapters)} layers "
                  f"({', '.join(c.targets)} in {', '.join(c.modules)}), base {c.base}"
                  + (f", {', '.join(self.lora.train_modules)} trained in full" if self.lora.train_modules else "")
                  + f": {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f}%)",
                  file=sys.stderr)
            for logger in self.loggers:
                logger.log_metrics({"lora/trainable_parameters": float(trainable)}, step=0)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
            if self.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.log("memory/peak_mib", peak, on_step=True, on_epoch=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the host, before the batch moves to the device: what would otherwise read the device mid-step.
        - the image placeholders are checked against the images (a ValueError naming the sample);
        - each token's sample kind becomes a tensor that travels with the batch (built on the device from a
          Python list, it would be a blocking host-to-device copy in the loss);
        - a right-padded batch drops its attention mask: causal attention alone is exact there, and deciding it
          on the device (`is_right_padded`) would read it back.
        The training step itself then reads nothing back but what is listed in docs/training.md."""
        if isinstance(batch, dict) and "input_ids" in batch and "labels" in batch:
            self.model.check_image_tokens(batch["input_ids"], batch.get("pixel_values"), batch.get("image_counts"))
            batch["token_kinds"] = token_kinds(batch)
            mask = batch.get("attention_mask")
            if mask is not None and batch.get("segment_ids") is None and is_right_padded(mask):
                batch["attention_mask"] = None
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.preference is not None:
            loss = self._preference_step("train", batch)
            self._check_finite(loss.detach(), batch, batch_idx)
            self._log_skipped(batch)
            return loss
        output = self.model(**forward_inputs(batch), loss_chunk=self.hparams.loss_chunk)
        if self.hparams.loss_weighting != "token":
            output.loss = weighted_loss(output.token_losses, batch["labels"], batch.get("segment_ids"),
                                        self.hparams.loss_weighting)
        if self._group_names is not None:
            output.loss = self._group_loss(output.token_losses, batch)
        loss = output.loss
        if self.teacher is not None:
            loss = self._with_distillation(output, batch)
        self._check_finite(loss.detach(), batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        sums, samples = loss_sums_by_kind(output.token_losses, batch), samples_by_kind(batch)
        for index, kind in enumerate(KINDS):
            if samples[kind]:  # this rank's batch only (no collective, so a kind may be absent on a rank); the
                # sample count is on the host, so deciding costs no device sync
                self.log(f"train/loss_{kind}", sums[index, 0] / sums[index, 1].clamp(min=1), on_step=True,
                         on_epoch=False, batch_size=samples[kind])
        self._log_skipped(batch)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    # Validation and test losses per kind: token sums over the whole pass, added up over ranks at its end.
    # (Logging them per batch with sync_dist would hang DDP when one rank never sees some kind.)
    def on_validation_epoch_start(self) -> None:
        self._eval_totals = torch.zeros(len(KINDS), 2, device=self.device)  # (kind, [loss sum, tokens])

    on_test_epoch_start = on_validation_epoch_start

    def _evaluation_step(self, stage: str, batch: dict[str, Any]) -> None:
        if self.preference is not None and "pairs" in batch:
            self._preference_step(stage, batch)
            return
        output = self.model(**forward_inputs(batch), loss_chunk=self.hparams.loss_chunk)
        self.log(f"{stage}/loss", output.loss, prog_bar=stage == "val", batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)
        self._eval_totals += loss_sums_by_kind(output.token_losses, batch)

    def _log_loss_by_kind(self, stage: str) -> None:
        totals = self.trainer.strategy.reduce(self._eval_totals, reduce_op="sum")  # the same on every rank now
        for index, kind in enumerate(KINDS):
            if totals[index, 1] > 0:
                self.log(f"{stage}/loss_{kind}", totals[index, 0] / totals[index, 1])

    def on_test_epoch_end(self) -> None:
        self._log_loss_by_kind("test")

    def on_validation_epoch_end(self) -> None:
        """Loss per kind, and generation-based VQA accuracy on a few validation questions."""
        self._log_loss_by_kind("val")
        datamodule = getattr(self.trainer, "datamodule", None)
        questions = datamodule.vqa_examples() if datamodule is not None else []
        if not questions or self.trainer.sanity_checking:
            return
        from mmllm.train.fsdp import is_sharded

        if is_sharded(self.trainer.strategy):
            # Generation runs outside the sharded forward, where the model's top-level weights are only shards.
            if not getattr(self, "_said_no_vqa", False) and self.trainer.is_global_zero:
                print("validation VQA is off under FSDP (val/loss is not): score the exported model with "
                      "`mmllm eval --task vqa`", file=sys.stderr)
            self._said_no_vqa = True
            return
        from mmllm.evaluation.vqa_answers import answer_questions
        from mmllm.evaluation.vqa_metric import vqa_accuracy
        from mmllm.inference import VisionLanguageModel

        vlm = VisionLanguageModel(self.model, self.tokenizer)
        vlm.decode = "eager"  # a compiled decoder would compile (and on a GPU capture graphs) inside training
        was_training = self.model.training
        # Compiled blocks (model.compile) are compiled for training shapes: decoding through them would compile
        # again for every cache length and layer until torch's recompile limit, so generation here runs eager.
        with torch.compiler.set_stance("force_eager"):
            answers = answer_questions(vlm, questions, datamodule.val_vqa_turns, max_new_tokens=8)
        self.model.train(was_training)
        scores = [vqa_accuracy(a, [q.answer]) for a, q in zip(answers, questions)]
        self.log("val/vqa_accuracy", sum(scores) / len(scores), prog_bar=True, sync_dist=True)
        by_type: dict[str, list[float]] = {}
        for score, question in zip(scores, questions):
            if question.question_type is not None:
                by_type.setdefault(question.question_type, []).append(score)
        # the learning curve of each type; this rank's questions only (a type absent on a rank would hang a sync)
        for question_type, values in sorted(by_type.items()):
            self.log(f"val/vqa_accuracy_{question_type}", sum(values) / len(values))

    def _check_finite(self, loss: torch.Tensor, batch: dict[str, Any], batch_idx: int) -> None:
        """FloatingPointError naming the first step whose loss was not finite.

        Reading the loss on the host waits for the device to finish the step, which on a GPU stalls the launch
        queue; so the check runs every `finite_check_every` steps (default: every step on a CPU, where reading is
        free, every 50 on an accelerator), the first bad step being kept on the device in between. Decided on
        every rank together: a rank that stopped alone would leave the others waiting forever.
        """
        every = self.hparams.finite_check_every or (1 if self.device.type == "cpu" else 50)
        if every == 1:
            if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
                raise FloatingPointError(
                    f"training loss is not finite at step {self.global_step} (batch {batch_idx} of the epoch, "
                    f"kinds {sorted(samples_by_kind(batch))}; loss {loss.item()} on rank {self.global_rank}); "
                    f"lower the learning rate or check the data")
            return
        first = getattr(self, "_first_nonfinite", None)
        if first is None or first.device != loss.device:
            first = self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=loss.device)
        first.copy_(torch.where((first < 0) & ~torch.isfinite(loss), self.global_step, first))
        if (self.global_step + 1) % every:
            return
        step = int(first)  # the one host read of the last `every` steps
        if self.trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            raise FloatingPointError(
                f"training loss is not finite from step {step if step >= 0 else 'unknown'} on (checked every "
                f"{every} steps, model.finite_check_every; rank {self.global_rank}); lower the learning rate or check "
                f"the data")

    def _log_skipped(self, batch: dict[str, Any]) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        counter = getattr(datamodule, "bad_samples", None)  # filled by the data module from each batch
        if counter is not None:
            self.log("train/skipped_samples", float(counter.total), on_step=True, on_epoch=False)

    # --------------------------------------------------------------------------- preference tuning
    reference = None  # the frozen reference model of model.preference (reference: frozen)

    def _start_preference(self, options, init_from, lora, train_modules, teacher, group_dro):
        """model.preference's options, and its frozen reference: a copy of the model as it starts, kept out of the
        module's children (not trained, not in checkpoints: a resumed run copies init_from again)."""
        if options is None:
            return None
        from mmllm.train.preference import frozen_copy, preference_options

        options = preference_options(options)
        if not init_from:
            raise ValueError("model.preference tunes a trained model (and measures it against its start): give "
                             "model.init_from")
        if teacher or group_dro:
            raise ValueError("model.preference has its own loss: leave model.teacher and model.group_dro unset")
        if options["reference"] == "adapters_off":
            if lora is None:
                raise ValueError("model.preference.reference adapters_off is the model without its LoRA adapters: "
                                 "give model.lora, or use reference frozen")
            if train_modules:
                raise ValueError(f"model.preference.reference adapters_off: model.train_modules {train_modules} "
                                 "train in full and would not be switched off; use reference frozen")
        else:
            self.__dict__["reference"] = frozen_copy(self.model)
        return options

    def _preference_step(self, stage: str, batch: dict[str, Any]) -> torch.Tensor:
        """The DPO / IPO loss of a batch of pairs, logged with TRL's reward metrics as STAGE/..."""
        from mmllm.errors import UsageError
        from mmllm.train.preference import adapters_off, preference_loss, sequence_logps

        pairs = batch.get("pairs")
        if pairs is None:
            raise UsageError("model.preference trains on preference pairs: give data.sources of kind preference")
        inputs = forward_inputs(batch)
        policy, tokens = sequence_logps(self.model(**inputs).token_losses, batch["labels"])
        with torch.no_grad():
            if self.reference is not None:
                reference_output = self.reference(**inputs)
            else:
                with adapters_off(self.model):
                    reference_output = self.model(**inputs)
        reference, _ = sequence_logps(reference_output.token_losses, batch["labels"])
        options = self.preference
        loss, metrics = preference_loss(policy, reference, tokens, options["loss"], options["beta"],
                                        options["sft_weight"])
        evaluating = stage != "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=pairs, sync_dist=evaluating)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "preference_accuracy", batch_size=pairs,
                     sync_dist=evaluating)
        return loss

    # ------------------------------------------------------------------------------------ optimiser
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clipping by norm under FSDP is FSDP's own (the norm over every rank's shards); Lightning's FSDP
        precision plugin refuses it otherwise."""
        from mmllm.train.fsdp import is_sharded

        if gradient_clip_val and is_sharded(self.trainer.strategy) and gradient_clip_algorithm in (None, "norm"):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        from mmllm.train.fsdp import is_sharded

        if self.hparams.optimizer == "muon" and is_sharded(self.trainer.strategy):
            raise ValueError("model.optimizer muon orthogonalises whole weight matrices, and FSDP gives the optimiser "
                             "flat shards of them: use model.optimizer adamw with an FSDP strategy, or DDP")
        optimizer = self.make_optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches))
        time_fraction = self._time_fraction() if self.hparams.schedule_by_time else None
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.hparams.warmup_steps, total, self.hparams.min_lr_ratio, time_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of every part that trains, at its peak rates (configure_optimizers adds the schedule)."""
        from mmllm.train.fsdp import unwrapped_name

        groups = []
        for part in PARTS:
            if part not in self.freeze and getattr(self.model, part) is not None:
                named = [(name, param, self._param_ndims[f"{part}.{unwrapped_name(name)}"])
                         for name, param in getattr(self.model, part).named_parameters()]
                groups += param_groups(named, lr=self.learning_rates[part], weight_decay=self.hparams.weight_decay,
                                       algorithm=self.hparams.optimizer, name=part)
        if not groups:
            raise ValueError(f"model.freeze={self.freeze} leaves nothing to train")
        return build_optimizer(groups, self.hparams.optimizer, tuple(self.hparams.betas), self.hparams.muon_momentum,
                               fused=self.device.type == "cuda", muon_ns_dtype=self.hparams.muon_ns_dtype)

    def _time_fraction(self):
        """A function giving the fraction of trainer.max_time spent training (resumed runs included: Lightning's
        Timer keeps its count in checkpoints)."""
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer.time_remaining() is None:
            raise ValueError("model.schedule_by_time needs trainer.max_time")

        def fraction() -> float:
            elapsed = timer.time_elapsed()
            return elapsed / max(1e-9, elapsed + timer.time_remaining())

        return fraction

    # ------------------------------------------------------------------------------ checkpoints
    def _with_distillation(self, output, batch: dict[str, Any]) -> torch.Tensor:
        """(1 - kd_weight) * CE + kd_weight * KD toward the teacher's logits on the same inputs; logs KD."""
        inputs = {key: value for key, value in forward_inputs(batch).items() if key != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        hp = self.hparams
        kd = distillation_loss(output.logits, teacher_logits, batch["labels"], hp.kd_loss, hp.kd_temperature,
                               hp.kd_beta)
        self.log("train/kd_loss", kd, batch_size=batch["input_ids"].shape[0])
        self.log("train/ce_loss", output.loss, batch_size=batch["input_ids"].shape[0])
        return (1 - hp.kd_weight) * output.loss + hp.kd_weight * kd

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The config and tokenizer travel inside the checkpoint, so `mmllm export` needs nothing else.
        checkpoint["mmllm_config"] = self.config.to_dict()
        checkpoint["mmllm_tokenizer"] = self.tokenizer.to_str()
        if getattr(self, "group_q", None) is not None:  # group DRO's weights, for a resumed run to go on with
            checkpoint["mmllm_group_dro"] = {"names": list(self._group_names.items()), "q": self.group_q.tolist()}
        if self.lora is not None:  # what trains, and where the frozen rest is (mmllm.formats.checkpoint reads it)
            trained = {f"model.{name}" for name in self.lora.trained}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
            checkpoint["mmllm_lora"] = self.lora.to_checkpoint()
            tensors = [*checkpoint["state_dict"].values(), *_tensors(checkpoint.get("optimizer_states", []))]
            size = sum(t.numel() * t.element_size() for t in tensors) / 2**20
            for logger in self.loggers:  # what the checkpoint's weights and optimiser state weigh
                logger.log_metrics({"lora/checkpoint_mib": size}, step=self.global_step)

    # ------------------------------------------------------------------------ losses by group
    _group_names: Optional[dict[str, int]] = None  # group -> index, when the loss weighs groups

    def _start_group_losses(self) -> None:
        """Reweighting (data.balance reweight) or group DRO: the groups the data module counted, and DRO's q."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self._group_weights = getattr(datamodule, "group_weights", None)
        if self.group_dro is None and self._group_weights is None:
            return
        if self.group_dro is not None and self._group_weights is not None:
            from mmllm.errors import UsageError

            raise UsageError("data.balance reweight and model.group_dro both weigh the loss: give one")
        if self.hparams.loss_weighting != "token":
            from mmllm.errors import UsageError

            raise UsageError("data.balance reweight and model.group_dro weigh whole samples: model.loss_weighting "
                             "must stay token")
        counts = datamodule.group_counts
        self._group_names = {group: index for index, (group, _) in enumerate(counts.most_common())}
        if self.group_dro is None:
            return
        restored = getattr(self, "_restored_group_q", None)
        if restored is not None:
            self._group_names, q = dict(restored["names"]), torch.tensor(restored["q"])
        else:
            q = torch.full((len(self._group_names),), 1 / len(self._group_names))
        self.group_q = q.to(self.device)
        if self.trainer.is_global_zero:
            print(f"model.group_dro by {self.group_dro.by} (step size {self.group_dro.step_size:g}): "
                  + ", ".join(f"{g} q={float(w):.3f}" for g, w in zip(self._group_names, self.group_q)),
                  file=sys.stderr)

    def _group_loss(self, token_losses: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        from data_pipelines.balance import NO_GROUP

        groups = [NO_GROUP if g is None else g for g in batch.get("groups") or [NO_GROUP] * len(batch["kinds"])]
        if self.group_dro is None:  # inverse frequency; a group the count never met weighs as the rarest one
            rarest = max(self._group_weights.values())
            weights = torch.tensor([self._group_weights.get(g, rarest) for g in groups], device=token_losses.device)
            return reweighted_loss(token_losses, batch["labels"], weights)
        rows = group_indices(groups, self._group_names, token_losses.device)
        if len(self._group_names) > len(self.group_q):  # a group the count never met joins at the mean weight
            extra = len(self._group_names) - len(self.group_q)
            q = torch.cat([self.group_q, self.group_q.mean().expand(extra)])
            self.group_q = q / q.sum()
        losses = group_mean_losses(token_losses.float(), batch["labels"], rows, len(self._group_names))
        q, loss = group_dro_step(self.group_q, losses, self.group_dro.step_size)
        self.group_q = q.detach()
        for group, index in self._group_names.items():
            self.log(f"group_dro/q_{'_'.join(group.split())}", self.group_q[index], on_step=True, on_epoch=False)
        return loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "mmllm_group_dro" in checkpoint:
            self._restored_group_q = checkpoint["mmllm_group_dro"]
        if self.lora is None:
            return
        missing = sorted(f"model.{name}" for name in self.lora.trained if f"model.{name}" not in checkpoint["state_dict"])
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained tensors of this LoRA run, e.g. {missing[:2]}")


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nest of dicts and lists (an optimiser's state)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


FORWARD_KEYS = ("input_ids", "pixel_values", "image_counts", "attention_mask", "position_ids", "segment_ids",
                "prefix_mask", "labels", "bidirectional")


def forward_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a collated batch that VLM.forward takes (not the sample kinds, which the loss uses)."""
    return {key: value for key, value in batch.items() if key in FORWARD_KEYS}


def samples_by_kind(batch: dict[str, Any]) -> Counter:
    """kind -> samples of that kind in the batch (packed rows count each of their segments)."""
    if "segment_kinds" in batch:
        return Counter(kind for row in batch["segment_kinds"] for kind in row)
    return Counter(batch["kinds"])


def token_kinds(batch: dict[str, Any]) -> torch.Tensor:
    """(B, T): index into KINDS of the kind of the sample each token belongs to (-1 on packing's padding)."""
    input_ids = batch["input_ids"]
    if "segment_kinds" in batch and batch.get("segment_ids") is not None:
        segment_kinds = batch["segment_kinds"]
        # table[b, k] = kind index of row b's segment k (segment 0 is padding)
        table = torch.full((len(segment_kinds), 1 + max(map(len, segment_kinds), default=0)), -1, dtype=torch.long)
        for row, kinds in enumerate(segment_kinds):
            table[row, 1:1 + len(kinds)] = torch.tensor([KINDS.index(kind) for kind in kinds], dtype=torch.long)
        return table.to(input_ids.device).gather(1, batch["segment_ids"])
    rows = torch.tensor([KINDS.index(kind) for kind in batch["kinds"]], device=input_ids.device)
    return rows[:, None].expand_as(input_ids)


def loss_sums_by_kind(token_losses: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """(len(KINDS), 2): each kind's summed loss over its supervised tokens, and their count, in one batch. The one
    helper behind train/loss_KIND (sum / count per batch) and val/loss_KIND (sums over the pass).

    token_losses: (B, T-1) from VLM.forward, aligned with labels[:, 1:]; a token counts for the kind of the sample
    it belongs to (with packing, its own segment's).
    """
    supervised = batch["labels"][:, 1:] != -100  # (B, T-1)
    precomputed = batch.get("token_kinds")
    target_kind = (precomputed if precomputed is not None else token_kinds(batch))[:, 1:]  # the kind of each position's target
    kinds = torch.arange(len(KINDS), device=target_kind.device)
    in_kind = (target_kind[None] == kinds[:, None, None]) & supervised[None]  # (K, B, T-1)
    losses = token_losses.detach().float()[None]
    return torch.stack([(losses * in_kind).sum(dim=(1, 2)), in_kind.sum(dim=(1, 2)).float()], dim=1)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float,
                  time_fraction: Optional[Callable[[], float]] = None):
    """Multiplier of the peak rate at each step: linear warmup, then cosine decay to `min_ratio`.

    With time_fraction (the share of a time budget spent), the decay follows the steps or the time, whichever
    is further along.
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if time_fraction is not None:
            progress = max(progress, time_fraction())
        progress = min(1.0, progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


# What a teacher must share with its student to read the same batches and predict over the same vocabulary.
