"""The model a fit starts from: built from a preset shaped by the data's tokenizer and image size, or read from
a model folder or checkpoint (`model.init_from`) and checked against the data; and the distillation teacher,
checked against the student; and LoRA adapters on it (mmllm.model.lora). VLMModule calls these once, in its
constructor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from data_pipelines.chat.special_tokens import MASK
from mmllm.config import VLMConfig
from mmllm.model import VLM
from mmllm.model.lora import LoRAConfig
from mmllm.model.vocabulary import grow_vocabulary

TEACHER_MATCHES = ("image_token_id", "pad_token_id", "tokens_per_image", "image_mean", "image_std", "resize",
                   "longest_edge", "image_markup", "image_splitting", "chat_template")


def load_teacher(folder: str, tokenizer: Any, student: VLMConfig, loss_chunk: Optional[int]):
    """The teacher model from its folder, frozen in eval mode; ValueError (one line) when it cannot teach this
    student: another tokenizer, another number of output rows, or other image inputs."""
    from mmllm.formats.model_folder import load_model_folder

    if loss_chunk:
        raise ValueError("model.teacher needs the student's logits; leave model.loss_chunk unset")
    teacher, teacher_tokenizer, config = load_model_folder(folder)
    if (teacher_tokenizer.get_vocab(with_added_tokens=True) != tokenizer.get_vocab(with_added_tokens=True)
            or config.lm.vocab_size != student.lm.vocab_size):
        raise ValueError(f"model.teacher {folder} has another tokenizer than the student; distillation compares "
                         "distributions over one vocabulary")
    differ = [name for name in TEACHER_MATCHES if getattr(config, name) != getattr(student, name)]
    if config.vision.image_size != student.vision.image_size:
        differ.insert(0, "image size")
    if differ:
        raise ValueError(f"model.teacher {folder} reads other inputs than the student ({', '.join(differ)} differ)")
    return teacher.eval().requires_grad_(False)


def check_shape_matches(config: VLMConfig, shape: dict[str, Any], init_from: str) -> None:
    """A model from init_from keeps its shape and preprocessing: model.lm / model.vision / layout fields that
    say otherwise (a pruned model's narrower MLP under the preset's config, say) are refused, naming them."""
    differ = []
    for part in ("lm", "vision"):
        for name, value in shape[part].items():
            if getattr(getattr(config, part), name, value) != value:
                differ.append(f"model.{part}.{name} is {value!r} but {getattr(getattr(config, part), name)!r} there")
    for name, value in shape.items():
        if name not in ("lm", "vision") and getattr(config, name) != value:
            differ.append(f"model.{name} is {value!r} but {getattr(config, name)!r} there")
    if differ:
        raise ValueError(f"a model from init_from {init_from} keeps its shape and preprocessing: "
                         + "; ".join(differ))


def build_model(preset: str, shape: dict[str, Any], init_from: Optional[str], attention: Optional[str],
                 model_inputs: dict[str, Any]):
    """The model and its tokenizer: from a model folder, or from a preset shaped by the data's tokenizer."""
    from data_pipelines.chat.tokenizer import add_mask_token, load_tokenizer

    if init_from:
        from mmllm.formats.checkpoint import model_from_checkpoint
        from mmllm.formats.model_folder import load_model_folder

        # A model folder, or a training checkpoint (a truncated or foreign one is a UsageError naming it).
        load = model_from_checkpoint if str(init_from).endswith(".ckpt") else load_model_folder
        model, tokenizer, config = load(init_from)
        model.train()  # folders load in eval mode, for inference
        if model_inputs.get("mask_token") and add_mask_token(tokenizer):  # an MLM run from a model without <mask>
            grow_vocabulary(model, tokenizer.token_to_id(MASK) + 1)
        # The data's tokenizer must be the model's: no more tokens than the embedding has rows (a pretrained
        # embedding may have spare rows), and the same image and pad ids.
        vocab = model_inputs.get("vocab_size")
        same_ids = all(model_inputs.get(key, getattr(config, key)) == getattr(config, key)
                       for key in ("image_token_id", "pad_token_id"))
        if (vocab is not None and vocab > config.lm.vocab_size) or not same_ids:
            raise ValueError(
                f"the data tokenizer ({vocab} tokens) does not match the model in {init_from} "
                f"({config.lm.vocab_size} rows, image id {config.image_token_id}); "
                f"train with data.tokenizer={init_from}/tokenizer.json"
            )
        if attention:
            config.attention = attention
        return model, tokenizer
    if not model_inputs:
        raise ValueError("model_inputs (tokenizer ids and image size) must come from the data module")
    shape["lm"] = {**shape["lm"], "vocab_size": model_inputs["vocab_size"]}
    if model_inputs.get("image_size"):
        shape["vision"] = {**shape["vision"], "image_size": int(model_inputs["image_size"])}
    config = VLMConfig.from_preset(
        preset, **shape, **({"attention": attention} if attention else {}),
        image_token_id=model_inputs["image_token_id"], pad_token_id=model_inputs["pad_token_id"],
        eos_token_ids=list(model_inputs["eos_token_ids"]), chat_template=model_inputs.get("chat_template"),
    )
    tokenizer, _ = load_tokenizer(model_inputs["tokenizer_path"])
    if model_inputs.get("mask_token"):
        add_mask_token(tokenizer)  # as the data module did to its own copy: the same ids
    return VLM(config), tokenizer


@dataclass
class LoRASetup:
    """A fit's adapters: their config, the base model folder, and the names of every parameter that trains."""

    config: LoRAConfig
    base: str  # the model folder the frozen weights come from (model.init_from)
    base_identity: dict[str, Any]  # its weights file's size and SHA-256 (a changed base is refused on load)
    adapters: list[str]  # the wrapped linear layers
    trained: list[str]  # parameter names under the model: the adapters' A and B, and train_modules' parameters
    train_modules: list[str]

    def to_checkpoint(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "base": self.base, "base_identity": self.base_identity,
                "train_modules": self.train_modules, "trained": self.trained}


def setup_lora(model: VLM, options: dict[str, Any], train_modules: Optional[list[str]],
               init_from: Optional[str]) -> LoRASetup:
    """Wrap the model's targeted linears in LoRA adapters, freeze the rest but `train_modules`, and report what
    trains. The base must be a model folder: a checkpoint names it instead of holding its weights."""
    from mmllm.formats.lora_adapters import weights_identity
    from mmllm.model.lora import add_lora

    if not init_from or str(init_from).endswith(".ckpt"):
        raise ValueError("model.lora adapts a pretrained model: set model.init_from to its model folder (from "
                         "mmllm build or mmllm export)")
    config = LoRAConfig(**options)
    adapters = add_lora(model, config)
    for part in train_modules or []:
        module = getattr(model, part, None)
        if module is None:
            raise ValueError(f"model.train_modules names {part!r}, which this model does not have")
        module.requires_grad_(True)
        for name in adapters:  # a part trained in full keeps its adapters' bases frozen all the same
            if name.startswith(f"{part}."):
                raise ValueError(f"model.train_modules {part!r} is also adapted by model.lora.modules; choose one")
    trained = [name for name, param in model.named_parameters() if param.requires_grad]
    return LoRASetup(config, str(Path(init_from).resolve()), weights_identity(init_from), adapters, trained,
                     list(train_modules or []))
