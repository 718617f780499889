"""The LightningDataModule: where training and validation batches come from (a weighted mixture of shards).

Its tokenizer fixes the vocabulary size and special-token ids; `model_inputs` hands them (and the image
size) to the model through a LightningCLI link. The processor is built from the model's config, so the
image size, normalisation and image-token count the data uses are exactly the model's.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from data_pipelines.augment import Augmentation
from data_pipelines.augment import check_available as check_augment_available
from data_pipelines.balance import Balance, count_groups, describe_groups, inverse_frequency_weights
from data_pipelines.counterfactual import Counterfactual
from data_pipelines.chat.special_tokens import MASK, SpecialIds, TokenIds
from data_pipelines.chat.tokenizer import add_mask_token, load_tokenizer, vocab_size
from data_pipelines.read.bad_samples import BadSampleCounter
from data_pipelines.read.eval_samples import VQAQuestion, vqa_questions
from data_pipelines.read.loader import Source, make_loader
from mmllm.errors import UsageError
from mmllm.processing import processor_for

# The mixture dataset splits its samples by rank and worker itself, so its __len__ is exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def own_template_config(tokenizer_path: str):
    """The model config beside a tokenizer.json when that folder is a model with its own chat template or a
    language model alone (its tokenizer kept as it is), else None."""
    from mmllm.formats.model_folder import CONFIG_FILE, read_model_config

    folder = Path(tokenizer_path).parent
    if not (folder / CONFIG_FILE).is_file():
        return None
    try:
        config = read_model_config(folder)
    except UsageError:  # not a model folder (a Hugging Face folder, say): the tokenizer is read as any other
        return None
    return config if config.chat_template is not None or not config.reads_images else None


class VLMDataModule(L.LightningDataModule):
    """Batches from caption, chat and text shards.

    Args:
        tokenizer: a tokenizer.json (trained with `mmllm tokenizer train`, or any other; the project's special
            tokens are added when missing). A model folder's own, for a model imported with its own chat template
            (`mmllm build --from-hf`), is used as it is.
        sources: the training mixture: `[{kind: caption|chat|text, path: folder or brace pattern, weight: 1.0}]`.
        val_sources: validation sources (weights ignored); chat sources also give the validation VQA questions.
        batch_size: samples per batch (per device; the Trainer's accumulate_grad_batches multiplies it).
        num_workers: DataLoader worker processes for training batches.
        image_size: image side in pixels for a model built from a preset (default: the preset's).
        max_length: tokens per sample (default: the model's context length); longer samples are truncated
            without cutting an image.
        packing: pack several samples per row (attention never crosses samples); `max_length` is the row length.
        resampled: draw shards with replacement, endlessly (multi-node training); else epochs over the data.
        shuffle_buffer: samples held for shuffling (compressed bytes).
        seed: seed of shard order, shuffling and source choice.
        val_vqa_questions: questions answered by generation at each validation (0: none), logged as
            `val/vqa_accuracy`.
        val_vqa_turns: how those questions are asked: `alone` (the first turn after the image) or `in-context`
            (after the gold earlier turns of their conversation); see data_pipelines.read.eval_samples.
        chat_template: for a model built from a preset, lay turns out with a Jinja chat template instead of
            mmllm's own: `smolvlm` (SmolVLM's layout; the tokenizer trained with `--tokens smolvlm`), or the path
            of a Jinja file. The model keeps it, and exports to transformers and llama.cpp with it.
        video: how a chat's clip (KEY.mp4 / .webm / .gif beside KEY.json) becomes frames: `{frames: 8, fps: null,
            max_seconds: null}`: `frames` images from the middles of equal spans (with fps, one every 1/fps s, at
            most `frames`), each placed in the chat with its timestamp (data_pipelines.video; needs `pip install
            'mmllm[video]'`). A clip that cannot be decoded is skipped and counted.
        augment: augmentation of training images, each part opt-in: `{crop_scale: 0.7, flip: false,
            color_jitter: 0.2}` (data_pipelines.augment; needs torchvision). Only what the labels survive: a flip
            swaps left and right, a jitter can change a colour's name. Validation images are never augmented.
        balance: every group of a sample field weighs the same: `{by: group, mode: resample | reweight}`; `by` is a
            key of the sample's JSON, `answer`, or a field of its `questions` entries (data_pipelines.balance).
            resample: the groups come equally often in each source's stream; reweight: the loss is weighted by
            inverse group frequency, counted over the first samples of the sources. The fit prints both.
        counterfactual: counterfactual augmentation of training samples: `{swaps: "red=blue,green", prob: 0.5}`:
            the words swapped, and where the sample's JSON describes its scene (the shapes set), the image
            redrawn to match; elsewhere only samples without images (data_pipelines.counterfactual).
    """

    def __init__(
        self,
        tokenizer: str,
        sources: list[Source],
        val_sources: Optional[list[Source]] = None,
        batch_size: int = 32,
        num_workers: int = 2,
        image_size: Optional[int] = None,
        max_length: Optional[int] = None,
        packing: bool = False,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        val_vqa_questions: int = 64,
        val_vqa_turns: Literal["alone", "in-context"] = "alone",
        chat_template: Optional[str] = None,
        augment: Optional[Augmentation] = None,
        video: Optional[dict[str, Any]] = None,
        balance: Optional[Balance] = None,
        counterfactual: Optional[Counterfactual] = None,
    ) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer
        self.chat_template = None
        folder_config = own_template_config(tokenizer)
        if folder_config is not None and chat_template is not None:
            raise ValueError("data.chat_template is for a model built from a preset; the model folder of "
                             f"{tokenizer} keeps its own")
        if folder_config is not None:
            # The tokenizer of a model folder with its own chat template (an imported checkpoint): its ids stay
            # its own, nothing is added, and the model config says which are special.
            from mmllm.formats.model_folder import load_model_tokenizer

            self.tokenizer, self.added_tokens = load_model_tokenizer(Path(tokenizer).parent, folder_config), []
            self.special_ids = SpecialIds(folder_config.image_token_id, folder_config.pad_token_id,
                                          list(folder_config.eos_token_ids))
        elif chat_template is not None:
            from data_pipelines.chat import smolvlm_format

            self.tokenizer, self.added_tokens = load_tokenizer(tokenizer)
            self.chat_template = smolvlm_format.chat_template_source(chat_template)
            self.special_ids = smolvlm_format.special_ids(self.tokenizer)
        else:
            self.tokenizer, self.added_tokens = load_tokenizer(tokenizer)
            token_ids = TokenIds.from_tokenizer(self.tokenizer)
            self.special_ids = SpecialIds(token_ids.image, token_ids.pad, token_ids.eos_ids)
        self.sources = [Source.of(s) for s in sources]
        self.val_sources = [Source.of(s) for s in (val_sources or [])]
        # Masked-LM sources need `<mask>`: added when missing, like the chat tokens (the model's tokenizer too,
        # through model_inputs' mask_token)
        self.mask_token = any(s.objective == "mlm" for s in [*self.sources, *self.val_sources])
        if self.mask_token and add_mask_token(self.tokenizer):
            self.added_tokens = [*self.added_tokens, MASK]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.max_length = max_length
        self.packing = packing
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.val_vqa_questions = val_vqa_questions
        self.val_vqa_turns = val_vqa_turns
        self.bad_samples = BadSampleCounter()  # training batches' skipped samples, kept across resumes
        self.val_bad_samples = BadSampleCounter()
        self.augment = augment if augment is not None and augment.active else None
        from data_pipelines.video import VideoOptions

        try:
            self.video = VideoOptions(**(video or {}))
        except TypeError as error:  # an unknown key
            raise UsageError(f"data.video takes frames, fps and max_seconds: {error}") from None
        if self.augment is not None:
            try:
                check_augment_available()  # said at startup, not in a loader worker
            except ImportError as error:
                raise UsageError(str(error)) from None
        self.balance, self.counterfactual = balance, counterfactual
        if balance is not None and balance.mode == "reweight" and packing:
            raise UsageError("data.balance reweight weighs each row's sample: it needs data.packing false")
        self.group_by: str | None = None  # the field whose group each training sample carries to the loss
        self.group_counts = self.group_weights = None
        if balance is not None:
            self.group_counts = self.count_groups(balance.by, "data.balance.by")
            if balance.mode == "reweight":
                self.group_by, self.group_weights = balance.by, inverse_frequency_weights(self.group_counts)
            shares = "" if balance.mode == "reweight" else f"; resampled to 1/{len(self.group_counts)} each"
            rank_zero_info(f"data.balance ({balance.mode}) by {balance.by}: "
                           f"{describe_groups(self.group_counts, self.group_weights)}{shares}")
        self.processor = self.train_processor = None
        self._vqa_questions: list[VQAQuestion] | None = None

    @property
    def model_inputs(self) -> dict[str, Any]:
        """What the model config takes from the data: linked to `model.model_inputs` by the CLI."""
        return {
            "vocab_size": vocab_size(self.tokenizer),
            "image_token_id": self.special_ids.image,
            "pad_token_id": self.special_ids.pad,
            "eos_token_ids": list(self.special_ids.eos_ids),
            "image_size": self.image_size,
            "tokenizer_path": self.tokenizer_path,
            "chat_template": self.chat_template,
            **({"mask_token": True} if self.mask_token else {}),
        }

    def count_groups(self, by: str, option: str):
        """Group -> samples over the first samples of each training source; UsageError when none has the field."""
        from data_pipelines.balance import SCAN_SAMPLES
        from data_pipelines.read.shards import read_samples

        counts, found = count_groups([read_samples(s.path, s.kind, decode=False) for s in self.sources], by)
        if not found:
            raise UsageError(f"{option}: no sample among the first {SCAN_SAMPLES} of each training source has a "
                             f"field {by!r} (a key of its JSON, `answer`, or a field of its `questions` entries)")
        return counts

    def use_groups(self, by: str) -> None:
        """Training samples carry their group of `by` to the loss (model.group_dro); UsageError when no sample has
        the field, or data.balance reweights by another one."""
        if self.group_by is not None and self.group_by != by:
            raise UsageError(f"model.group_dro.by ({by}) and data.balance.by ({self.group_by}) reweight by two "
                             f"fields: give one")
        if self.packing:
            raise UsageError("model.group_dro weighs each row's sample: it needs data.packing false")
        if self.group_counts is None or self.group_by != by:
            self.group_counts = self.count_groups(by, "model.group_dro.by")
        self.group_by = by

    def check_preference(self, preference: Any) -> None:
        """Preference pairs train only under model.preference, alone (each batch is pairs), one per row; UsageError
        in one line otherwise."""
        kinds = {source.kind for source in self.sources}
        if preference is None and "preference" in kinds:
            raise UsageError("data.sources holds preference pairs: train them with model.preference "
                             "({loss: dpo, beta: 0.1})")
        if preference is not None and kinds != {"preference"}:
            raise UsageError(f"model.preference trains on preference sources alone; data.sources holds "
                             f"{', '.join(sorted(kinds - {'preference'}))} too")
        if preference is not None and self.packing:
            raise UsageError("model.preference keeps each answer in a row of its own: it needs data.packing false")

    def setup(self, stage: str) -> None:
        config = self.trainer.lightning_module.config
        if stage == "fit":
            self.check_preference(getattr(self.trainer.lightning_module, "preference", None))
        group_dro = getattr(self.trainer.lightning_module, "group_dro", None)
        if group_dro is not None and stage == "fit":
            self.use_groups(group_dro.by)
        self.processor = processor_for(config, self.tokenizer, self.max_length)
        self.processor.video = self.video
        self.train_processor = self.processor
        if self.augment is not None:
            self.train_processor = copy.copy(self.processor)
            self.train_processor.augment = self.augment

    def _loader(self, sources: list[Source], train: bool):
        return make_loader(sources, self.train_processor if train else self.processor, self.batch_size,
                           num_workers=self.num_workers if train else 0,
                           rank=self.trainer.global_rank, world_size=self.trainer.world_size,
                           seed=self.seed, resampled=self.resampled and train, shuffle=train,
                           shuffle_buffer=self.shuffle_buffer, packing=self.packing and train,
                           max_length=self.max_length or self.processor.max_length,
                           mlm_rate=self.trainer.lightning_module.mlm_rate,
                           balance=self.balance if train else None, group_by=self.group_by if train else None,
                           counterfactual=self.counterfactual if train else None)

    def train_dataloader(self):
        loader = self._loader(self.sources, train=True)
        epoch, trained = self._resume_position(len(loader))
        loader.set_epoch(epoch)
        if trained:
            rank_zero_info(f"resuming epoch {epoch} after its first {trained} batches: reading past them")
            # Lightning warns that a loader without state_dict restarts its epoch; this one does not.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            return ResumedLoader(loader, trained)
        return loader

    def _resume_position(self, batches_per_epoch: int) -> tuple[int, int]:
        """(epoch, batches of it already trained): where a run restored from a checkpoint continues the data.

        Lightning restores its loop counters before asking for the loader; a checkpoint written after the last
        batch of an epoch continues with the next epoch.
        """
        fit_loop = self.trainer.fit_loop
        epoch = self.trainer.current_epoch
        if not fit_loop.restarting:
            return epoch, 0
        trained = fit_loop.epoch_loop.batch_progress.current.processed
        if trained >= batches_per_epoch:
            return epoch + 1, 0
        return epoch, trained

    def val_dataloader(self):
        if not self.val_sources:
            warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
            return []  # no validation
        return self._loader(self.val_sources, train=False)

    def test_dataloader(self):
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # The skipped-sample counts ride along each batch.
        counter = self.bad_samples if self.trainer.training else self.val_bad_samples
        return counter.absorb(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_samples": self.bad_samples.state_dict()}  # reason -> the skipped samples' names

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bad_samples.load_state_dict(state_dict.get("skipped_samples", {}))

    def teardown(self, stage: str) -> None:
        for name, counter in (("training", self.bad_samples), ("validation", self.val_bad_samples)):
            if counter.total:
                rank_zero_info(f"{name} data: {counter.summary()}")

    def vqa_examples(self) -> list[VQAQuestion]:
        """The first `val_vqa_questions` questions of the chat validation sources (read once)."""
        if self._vqa_questions is None:
            chats = [s.path for s in self.val_sources if s.kind == "chat"]
            self._vqa_questions = (
                vqa_questions(chats, limit=self.val_vqa_questions) if chats and self.val_vqa_questions else []
            )
            if self._vqa_questions:
                rank_zero_info(f"validation VQA: {len(self._vqa_questions)} questions asked {self.val_vqa_turns} "
                               f"(val/vqa_accuracy)")
        return self._vqa_questions


class ResumedLoader:
    """A mixture loader whose first pass starts `skip` batches in: the rest of an epoch a killed run began.

    The skipped batches are read and dropped (the pipeline has no cheaper way to find its place), so the
    resumed run trains on exactly the batches the uninterrupted run would have. Later passes are whole epochs.
    """

    def __init__(self, loader, skip: int) -> None:
        self.loader = loader
        self.skip = skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # A generator, so nothing happens until the first batch is asked for: Lightning calls iter() once
        # just to check that the loader is iterable.
        skip, self.skip = self.skip, 0
        yield from itertools.islice(self.loader, skip, None)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
