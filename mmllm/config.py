"""Model configuration: dataclasses for the language model, the vision encoder and the VLM, with named presets.

A config round-trips through `config.json` in every model folder (`VLMConfig.to_dict` / `from_dict`).
Vocabulary size and special-token ids come from the tokenizer (`VLMConfig.with_tokenizer_ids`), so a
training config never states them twice. These dataclasses are the one source of truth: presets are
reshaped through `VLMConfig.from_preset` (every command and the trainer), the trainer's typed `model.lm` /
`model.vision` options are derived from their fields (`shape_options`), and a bad value fails in
`__post_init__` with the field's name.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
import math
import types
from typing import Any, Literal, TypedDict, Union, get_args, get_origin, get_type_hints


@dataclass
class LMConfig:
    """A Llama-style decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU."""

    vocab_size: int = 2048
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 2  # grouped-query attention: each kv head serves n_heads // n_kv_heads query heads
    mlp_dim: int = 512  # SwiGLU hidden width
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False  # Qwen2-style q/k/v biases
    qk_norm: bool = False  # Qwen3/OLMo2-style RMSNorm of each head's queries and keys before the rotation
    head_dim: int | None = None  # derived: dim // n_heads unless set

    def __post_init__(self) -> None:
        _check_types(self, "lm")
        _check_positive(self, "lm", ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim",
                                     "max_seq_len", "head_dim"))
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"LM dim {self.dim} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")


@dataclass
class VisionConfig:
    """A SigLIP-style ViT: conv patches, learned absolute positions, pre-norm blocks, no CLS token."""

    image_size: int = 64
    patch_size: int = 8
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_dim: int = 512
    norm_eps: float = 1e-6
    activation: Literal["gelu", "gelu_tanh"] = "gelu_tanh"

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def __post_init__(self) -> None:
        _check_types(self, "vision")
        _check_positive(self, "vision", ("image_size", "patch_size", "dim", "n_layers", "n_heads", "mlp_dim"))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.n_heads:
            raise ValueError(f"vision dim {self.dim} is not divisible by n_heads {self.n_heads}")


@dataclass
class VLMConfig:
    """The whole model: vision encoder -> pixel shuffle + projector -> language model. `vision: None` is a
    language model alone (a pretrained LM read from a GGUF file or a Hugging Face folder): no vision tower, no
    projector, no image tokens; the image fields below are then unused."""

    lm: LMConfig = field(default_factory=LMConfig)
    vision: VisionConfig | None = field(default_factory=VisionConfig)
    pixel_shuffle: int = 2  # r: each r x r block of patches becomes one image token
    # After the pixel shuffle: an MLP (fc1, GELU, fc2), or one bias-free Linear (Idefics3/SmolVLM's, exportable).
    projector: Literal["mlp", "linear"] = "mlp"
    # Where each image token sits, in its content as well as in its rotary angle: "rows_cols" adds a learned row
    # and a learned column vector (zero at the start) to every image token after the projector, so a value an
    # answer retrieves from an image token says where that token was (Relation Networks' and CoordConv's
    # coordinates). "none": position only through the LM's 1-D rotary angles.
    image_positions: Literal["none", "rows_cols"] = "none"
    attention: Literal["causal", "prefix"] = "causal"
    # Special-token ids, set from the tokenizer (see with_tokenizer_ids).
    image_token_id: int = 0
    pad_token_id: int = 1
    eos_token_ids: list[int] = field(default_factory=lambda: [2])  # generation stops at any of these
    # Image preprocessing travels with the weights so inference matches training.
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    resize: Literal["squash", "center_crop", "pad", "idefics3"] = "squash"
    # resize "idefics3" only: the long side is first scaled to this many pixels (aspect kept), then the image is
    # squashed to image_size, both with Lanczos: what the Idefics3/SmolVLM processor does without image splitting.
    longest_edge: int | None = None
    # How the prompt lays out each image's tokens: "none" (the image tokens alone) or "idefics3"
    # (<fake_token_around_image><global-img> image tokens <fake_token_around_image>, ids from the tokenizer).
    image_markup: Literal["none", "idefics3"] = "none"
    # Idefics3's image splitting (image_markup idefics3 only): after the long side is scaled to longest_edge, an
    # image larger than image_size is cut into image_size tiles, each encoded like an image, then the whole image
    # is added squashed to image_size; the prompt marks tile (i, j) with <row_i_col_j>.
    image_splitting: bool = False
    # A checkpoint's own Jinja chat template (Hugging Face's `chat_template`), kept with the weights so that
    # fine-tuning and inference lay out turns as the checkpoint was trained; None: mmllm's own template.
    chat_template: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lm, dict):
            self.lm = _build(LMConfig, self.lm, "lm")
        if isinstance(self.vision, dict):
            self.vision = _build(VisionConfig, self.vision, "vision")
        _check_types(self, "model")
        _check_positive(self, "model", ("pixel_shuffle",))
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or not all(self.image_std):
            raise ValueError(f"image_mean and image_std need 3 values (RGB), std non-zero; got {self.image_mean} "
                             f"and {self.image_std}")
        if self.resize == "idefics3" and not self.longest_edge:
            raise ValueError("resize 'idefics3' needs longest_edge (the first resize step's long side in pixels)")
        if self.image_splitting and (self.resize != "idefics3" or self.image_markup != "idefics3"):
            raise ValueError("image_splitting needs resize idefics3 and image_markup idefics3")
        if self.vision is not None and self.vision.grid_size % self.pixel_shuffle:
            raise ValueError(
                f"patch grid {self.vision.grid_size} is not divisible by pixel_shuffle {self.pixel_shuffle}"
            )

    @property
    def reads_images(self) -> bool:
        return self.vision is not None

    @property
    def tokens_per_image(self) -> int:
        """Image tokens the LM sees per image: (image_size / patch_size / pixel_shuffle)^2; 0 without vision."""
        return 0 if self.vision is None else (self.vision.grid_size // self.pixel_shuffle) ** 2

    def with_tokenizer_ids(
        self, vocab_size: int, image_token_id: int, pad_token_id: int, eos_token_ids: list[int]
    ) -> "VLMConfig":
        """A copy whose vocabulary size and special ids are those of a tokenizer."""
        config = copy.deepcopy(self)
        config.lm.vocab_size = vocab_size
        config.image_token_id = image_token_id
        config.pad_token_id = pad_token_id
        config.eos_token_ids = list(eos_token_ids)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLMConfig":
        """A config from `to_dict`'s layout; ValueError naming any unknown or bad field."""
        data = dict(data)
        lm, vision = data.pop("lm", {}), data.pop("vision", {})
        for name, part in (("lm", lm), ("vision", vision)):
            if not isinstance(part, dict) and not (name == "vision" and part is None):
                raise ValueError(f"model.{name} must be a mapping of its fields, got {part!r}")
        return _build(cls, {**data, "lm": dict(lm), "vision": None if vision is None else dict(vision)}, "model")

    @classmethod
    def from_preset(cls, name: str, lm: dict[str, Any] | None = None, vision: dict[str, Any] | None = None,
                    **fields: Any) -> "VLMConfig":
        """A preset with some fields replaced: `lm` / `vision` fields of those parts, and top-level `fields`.
        Derived fields are derived again (a new dim or n_heads gives head_dim = dim // n_heads unless given). Validated like any config."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        data = PRESETS[name].to_dict()
        if lm:
            derive = {"head_dim": None} if {"dim", "n_heads"} & set(lm) else {}
            data["lm"] = {**data["lm"], **derive, **lm}
        if vision:
            data["vision"] = {**data["vision"], **vision}
        return cls.from_dict({**data, **fields})


def _build(cls: type, data: dict[str, Any], where: str):
    """cls(**data), with an unknown field named as a ValueError rather than a TypeError."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where} config has no field {', '.join(unknown)}; fields: {', '.join(names)}")
    return cls(**data)


def _check_types(config: Any, where: str) -> None:
    """Every field of a config dataclass holds a value of its declared type (ints as floats where a float is
    declared; floats finite and, for rope_theta and norm_eps, positive); ValueError naming the field."""
    hints = get_type_hints(type(config))
    for field_ in dataclasses.fields(config):
        hint, value = hints[field_.name], getattr(config, field_.name)
        if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(value):
            continue  # a nested config checks itself
        ok, value = _conform(value, hint)
        if not ok or (field_.name in ("rope_theta", "norm_eps") and not value > 0):
            raise ValueError(f"{where}.{field_.name} must be {_describe(hint)}, got {getattr(config, field_.name)!r}")
        setattr(config, field_.name, value)


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether value fits the type hint, the value as stored: ints become floats for float fields)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            ok, conformed = _conform(value, option)
            if ok:
                return True, conformed
        return False, value
    if origin is Literal:
        return value in get_args(hint) and isinstance(value, str), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_conform(item, get_args(hint)[0]) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return number, float(value) if number else value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in get_args(hint))
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    if get_origin(hint) is list:
        item = get_args(hint)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _describe(item))
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def _check_positive(config: Any, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{where}.{name} must be a positive integer, got {value!r}")


def shape_options(config_class: type, name: str, exclude: tuple[str, ...] = ()) -> type:
    """A TypedDict of the dataclass's fields (all optional): the typed `model.lm` / `model.vision` options of the
    trainer, so LightningCLI rejects a misspelt field or a wrong type before any model is built."""
    hints = get_type_hints(config_class)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(config_class) if f.name not in exclude}
    return TypedDict(name, fields, total=False)


PRESETS: dict[str, VLMConfig] = {
    # A few million parameters: tests and the CPU demo on 64 px shapes scenes (16 image tokens).
    "tiny": VLMConfig(
        lm=LMConfig(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, mlp_dim=512, max_seq_len=512),
        vision=VisionConfig(image_size=64, patch_size=8, dim=128, n_layers=4, n_heads=4, mlp_dim=512),
        pixel_shuffle=2,
        preset="tiny",
    ),
    # The shape of nanoVLM-222M: SigLIP ViT-B/16 at 224 px + a SmolLM2-135M-shaped LM, 49 image tokens.
    "small": VLMConfig(
        lm=LMConfig(
            vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, mlp_dim=1536,
            max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True,
        ),
        vision=VisionConfig(image_size=224, patch_size=16, dim=768, n_layers=12, n_heads=12, mlp_dim=3072),
        pixel_shuffle=2,
        preset="small",
    ),
    # The shape of SmolVLM-256M (Idefics3): a SigLIP-B/16 tower at 512 px, pixel shuffle 4 and one linear layer
    # into a SmolLM2-135M-shaped LM, 64 image tokens per tile in Idefics3's markup; exportable to transformers and
    # llama.cpp (with data.chat_template smolvlm and a tokenizer trained with --tokens smolvlm).
    "smolvlm": VLMConfig(
        lm=LMConfig(
            vocab_size=49280, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, mlp_dim=1536,
            max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
        ),
        vision=VisionConfig(image_size=512, patch_size=16, dim=768, n_layers=12, n_heads=12, mlp_dim=3072),
        pixel_shuffle=4,
        projector="linear",
        resize="idefics3",
        longest_edge=2048,
        image_markup="idefics3",
        image_splitting=True,  # 512 px tiles of the image scaled to 2048 px, plus the whole image
        preset="smolvlm",
    ),
    # SigLIP ViT-B/16 at 384 px + a SmolLM2-360M-shaped LM, 144 image tokens.
    "base": VLMConfig(
        lm=LMConfig(
            vocab_size=49152, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, mlp_dim=2560,
            max_seq_len=4096, rope_theta=100000.0, tie_embeddings=True,
        ),
        vision=VisionConfig(image_size=384, patch_size=16, dim=768, n_layers=12, n_heads=12, mlp_dim=3072),
        pixel_shuffle=2,
        preset="base",
    ),
}
