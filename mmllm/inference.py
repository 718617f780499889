"""The Python API of a trained model: caption images, ask questions, chat, continue text, score text.

    import mmllm
    vlm = mmllm.load("models/shapes-tiny")
    vlm.caption("a.png")                       # -> "a small red circle at the top left."
    vlm.caption(["a.png", "b.png"])            # a list in, a list out (batched)
    vlm.ask("a.png", "What colour is the circle?")
    vlm.chat([{"role": "user", "content": "<image>\\nWhat is this?"}], images=["a.png"])
    vlm.generate("Once upon a time")
    vlm.fill_mask("a red <mask> at the top left.", image="a.png")   # a model trained with the MLM objective

Images are paths, PIL images or (3, H, W) tensors with values in [0, 1]. Every prompt goes through
data_pipelines' Processor (chat template, image preprocessing), the code that made the training batches,
so what the model sees in `ask` is exactly what it saw in training. A user's mistake (missing or unreadable
image, prompt too long, markers that do not match the images) raises `UsageError` with one clear line.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import torch
from PIL import Image

from data_pipelines.batching import collate
from data_pipelines.chat.conversation import NoSupervisedTokens, normalise_conversation, question_conversation
from data_pipelines.chat.special_tokens import CAPTION_INSTRUCTION, MASK
from data_pipelines.images import ImageError, load_image
from data_pipelines.processor import NoImages
from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.model.generation import DECODES, default_decode, generate, stream
from mmllm.processing import processor_for

ImageLike = Union[str, Path, Image.Image, torch.Tensor]
Progress = Callable[[int, int], None]  # progress(done, total), called after each batch
LOGITS_BUDGET = 2**27  # logit values held at once when scoring text (512 MiB in float32)


@dataclass
class SamplingOptions:
    """How new tokens are chosen: greedy when temperature is 0."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UsageError(f"temperature must not be negative, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")


class VisionLanguageModel:
    """A model with its tokenizer and processor, ready to answer. Built by `load`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, source: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config: VLMConfig = model.config
        self.processor = processor_for(self.config, tokenizer)
        self.source = source  # the folder or checkpoint it was loaded from, for reports
        self.quantization = None  # mmllm.compress.quantization.QuantizationReport when `load` quantised the model
        self.decode = default_decode(self.device)  # eager, static or compiled (mmllm.model.generation)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --------------------------------------------------------------------------------- tasks
    def caption(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16,
                progress: Progress | None = None, **sampling) -> str | list[str]:
        """A caption per image, asked with the instruction the caption data was trained with.

        One image in, one caption out; a list in, a list out.
        """
        many = _is_batch(images)
        image_list = list(images) if many else [images]
        captions = self.ask_many(image_list, [CAPTION_INSTRUCTION] * len(image_list), batch_size=batch_size,
                                 progress=progress, **sampling)
        return captions if many else captions[0]

    def stream_caption(self, image: ImageLike, **sampling) -> Iterator[str]:
        """`caption` of one image as text pieces, yielded as tokens are produced."""
        return self.stream_ask(image, CAPTION_INSTRUCTION, **sampling)

    def ask(self, image: ImageLike | None | Sequence[ImageLike | None], question: str | Sequence[str],
            batch_size: int = 16, **sampling) -> str | list[str]:
        """The answer to a question about an image (None: no image); lists of both give a list of answers."""
        if isinstance(question, str):
            if _is_batch(image):
                raise ValueError("ask: a list of images needs a list of questions of the same length")
            return self.ask_many([image], [question], **sampling)[0]
        images = list(image) if _is_batch(image) else [image] * len(question)
        return self.ask_many(images, list(question), batch_size=batch_size, **sampling)

    def ask_many(self, images: Sequence[ImageLike | None], questions: Sequence[str], batch_size: int = 16,
                 progress: Progress | None = None, **sampling) -> list[str]:
        """Answers to single-turn questions, one image (or None) each, batched with left padding."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        conversations = [question_conversation(q, with_image=im is not None) for im, q in zip(images, questions)]
        image_lists = [[im] if im is not None else [] for im in images]
        return self.chat_many(conversations, image_lists, batch_size=batch_size, progress=progress, **sampling)

    def chat_many(self, conversations: Sequence[list[dict]], image_lists: Sequence[Sequence[ImageLike]],
                  batch_size: int = 16, progress: Progress | None = None, **sampling) -> list[str]:
        """The assistant's next turn of each conversation (see `chat`), batched with left padding."""
        if len(conversations) != len(image_lists):
            raise ValueError(f"{len(conversations)} conversations but {len(image_lists)} image lists")
        return self._answer_batches([_conversation(c) for c in conversations], [list(i) for i in image_lists],
                                    batch_size, SamplingOptions(**sampling), progress)

    def explain(self, image: ImageLike, question: str, answer: str | None = None, **sampling):
        """The answer to a question (or a given answer) and where in the image it looked: an
        mmllm.explain.Explanation, whose `.save("out.png")` draws the heatmap and `.relevance` holds the
        share of each image token (rows, cols)."""
        from mmllm.explain import explain_question

        try:
            return explain_question(self, to_pil(image), question, answer, **sampling)
        except ImageError as error:
            raise UsageError(f"unusable image: {error}") from None

    def chat(self, messages: list[dict], images: Sequence[ImageLike] = (), **sampling) -> str:
        """The assistant's next turn of a conversation ending with a user turn.

        messages: `{"role", "content"}` (or LLaVA `{"from", "value"}`) rows; each `<image>` marker in them
        takes the next of `images`.
        """
        return self._answer_batches([_conversation(messages)], [list(images)], 1, SamplingOptions(**sampling))[0]

    def stream_chat(self, messages: list[dict], images: Sequence[ImageLike] = (), **sampling) -> Iterator[str]:
        """`chat` as text pieces, yielded as tokens are produced; their concatenation equals `chat`'s answer."""
        batch = self._prompt_batch([_conversation(messages)], [list(images)])
        yield from self._stream_text(batch, SamplingOptions(**sampling), strip=True)

    def generate(self, prompt: str | Sequence[str], batch_size: int = 16, **sampling) -> str | list[str]:
        """Plain-text continuation of a prompt (no chat template), exactly as decoded (not stripped)."""
        many = not isinstance(prompt, str)
        prompts = list(prompt) if many else [prompt]
        options = SamplingOptions(**sampling)
        continuations: list[str] = []
        for start in range(0, len(prompts), batch_size):
            encoded = [self._encode_text_prompt(p) for p in prompts[start:start + batch_size]]
            batch = collate(encoded, pad_id=self.config.pad_token_id, padding_side="left")
            continuations.extend(self.processor.decode(row) for row in self._generate(batch, options))
        return continuations if many else continuations[0]

    def stream_generate(self, prompt: str, **sampling) -> Iterator[str]:
        """`generate` as text pieces; their concatenation equals `generate(prompt)`."""
        batch = collate([self._encode_text_prompt(prompt)], pad_id=self.config.pad_token_id, padding_side="left")
        yield from self._stream_text(batch, SamplingOptions(**sampling), strip=False)

    def video_question(self, clip: str | Path | bytes, question: str, video=None) -> tuple[list[dict], list]:
        """(the one-turn conversation, its frames) of a question about a clip: the frames drawn as training draws
        them (data_pipelines.video; `video` a VideoOptions, default 8 frames), their timestamped lines before the
        question. UsageError in one line for a clip that cannot be decoded, is too long, or without PyAV."""
        from data_pipelines.video import BadVideo, VideoOptions, VideoTooLong, decode_frames, frames_text

        try:
            data = clip if isinstance(clip, bytes) else Path(clip).read_bytes()
            frames, duration = decode_frames(data, video or VideoOptions())
        except ModuleNotFoundError:
            raise UsageError("reading clips needs PyAV: pip install 'mmllm[video]'") from None
        except FileNotFoundError:
            raise UsageError(f"no such clip: {clip}") from None
        except (BadVideo, VideoTooLong) as error:
            raise UsageError(f"unusable clip {clip if not isinstance(clip, bytes) else ''}: {error}") from None
        text = frames_text([time for time, _ in frames], duration)
        return [{"role": "user", "content": f"{text}\n{question}"}], [image for _, image in frames]

    def ask_video(self, clip: str | Path | bytes, question: str, video=None, **sampling) -> str:
        """The answer to a question about a clip (video_question's frames and prompt)."""
        messages, frames = self.video_question(clip, question, video)
        return self.chat(messages, frames, **sampling)

    def stream_ask(self, image: ImageLike | None, question: str, **sampling) -> Iterator[str]:
        """`ask` for one image as text pieces; their concatenation equals `ask(image, question)`."""
        conversation = question_conversation(question, with_image=image is not None)
        batch = self._prompt_batch([conversation], [[image] if image is not None else []])
        yield from self._stream_text(batch, SamplingOptions(**sampling), strip=True)

    @torch.inference_mode()
    def text_nll(self, texts: Sequence[str], batch_size: int = 16,
                 progress: Progress | None = None) -> list[tuple[float, int] | None]:
        """Per text: (NLL in nats summed over its scored tokens, tokens scored), None for an empty text.

        Each text + <|endoftext|> is cut into pieces of at most max_seq_len tokens by the processor
        (`encode_text_chunks`, the training encoding); every token of a piece but its first is predicted
        from the tokens before it in that piece. Pieces of all texts are batched with right padding.
        """
        pieces: list[tuple[int, Any]] = []  # (text index, EncodedSample)
        for index, text in enumerate(texts):
            try:
                pieces.extend((index, piece) for piece in self.processor.encode_text_chunks(text))
            except NoSupervisedTokens:
                continue  # an empty text has no token to predict
        totals: list[tuple[float, int] | None] = [None] * len(texts)
        # Full-sequence logits are (rows, max_seq_len, vocab): cap the rows so they stay within LOGITS_BUDGET.
        batch_size = max(1, min(batch_size, LOGITS_BUDGET // (self.max_length * self.config.lm.vocab_size)))
        for start in range(0, len(pieces), batch_size):
            part = pieces[start:start + batch_size]
            batch = collate([piece for _, piece in part], pad_id=self.config.pad_token_id, padding_side="right")
            labels = batch["labels"].to(self.device)
            output = self.model(input_ids=batch["input_ids"].to(self.device),
                                attention_mask=batch["attention_mask"].to(self.device), labels=labels)
            nll = output.token_losses.double().sum(dim=1).tolist()  # (b,): 0 on unsupervised positions
            scored = (labels[:, 1:] != -100).sum(dim=1).tolist()
            for (index, _), piece_nll, piece_tokens in zip(part, nll, scored):
                before = totals[index] or (0.0, 0)
                totals[index] = (before[0] + piece_nll, before[1] + piece_tokens)
            if progress is not None:
                progress(min(start + batch_size, len(pieces)), len(pieces))
        return totals

    def fill_mask(self, text: str, image: ImageLike | None = None, top_k: int = 5) -> list[list[dict]]:
        """The `top_k` fillers of each `<mask>` in text (one token each), most probable first: per mask a list of
        {"score", "token", "token_str", "sequence"} as transformers' fill-mask pipeline gives them (sequence: the
        text with that mask filled). With an image the text is read as its caption, without as a text document:
        the encodings of MLM training (Processor.encode_masked). Attention is bidirectional over the whole input."""
        try:
            encoded, positions = self.processor.encode_masked(text, to_pil(image) if image is not None else None)
        except ImageError as error:
            raise UsageError(f"unusable image: {error}") from None
        except NoImages:
            raise UsageError(NO_IMAGES) from None
        except ValueError as error:
            raise UsageError(str(error)) from None
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        probabilities, ids = self.mask_predictions([encoded], [positions], top_k)[0]
        pieces = text.split(MASK)
        fills = []
        for index, (row_probs, row_ids) in enumerate(zip(probabilities.tolist(), ids.tolist())):
            fills.append([])
            for score, token in zip(row_probs, row_ids):
                filler = self.tokenizer.decode([token], skip_special_tokens=False)
                sequence = "".join(piece.rstrip(" ") + filler if i == index else
                                   piece + (MASK if i < len(pieces) - 1 else "")
                                   for i, piece in enumerate(pieces))
                fills[-1].append({"score": score, "token": token, "token_str": filler.strip(), "sequence": sequence})
        return fills

    @torch.inference_mode()
    def mask_predictions(self, encoded: Sequence[Any], positions: Sequence[Sequence[int]], top_k: int,
                         batch_size: int = 64, progress: Progress | None = None
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per MLM-encoded sample (Processor.encode_masked): (probabilities, token ids), each (masks, top_k), of the
        most probable tokens at its masked positions; batched with right padding, bidirectional attention."""
        results = []
        for start in range(0, len(encoded), batch_size):
            part = list(encoded[start:start + batch_size])
            batch = collate(part, pad_id=self.config.pad_token_id, padding_side="right")
            inputs = {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask", "image_counts",
                                                                  "bidirectional", "pixel_values") if key in batch}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            logits = self.model(**inputs).logits  # (b, T, vocab)
            special = list(self.processor.special_token_ids)
            logits[..., special] = float("-inf")  # never a filler: special tokens are never masked in training
            for row, where in enumerate(positions[start:start + batch_size]):
                probabilities = logits[row, list(where)].float().softmax(dim=-1)  # (masks, vocab)
                top = probabilities.topk(min(top_k, probabilities.size(-1)), dim=-1)
                results.append((top.values.cpu(), top.indices.cpu()))
            if progress is not None:
                progress(min(start + batch_size, len(encoded)), len(encoded))
        return results

    def blank_image(self) -> Image.Image:
        """An image of the normalisation mean colour (all zeros once normalised): `--blind` evaluation."""
        size = self.config.vision.image_size
        return Image.new("RGB", (size, size), tuple(round(255 * m) for m in self.config.image_mean))

    def prompt_length(self, messages: list[dict], num_images: int) -> int:
        """Tokens of the generation prompt for a conversation (no image decoded); `max_length` is the limit."""
        if num_images and not self.config.reads_images:
            raise UsageError(NO_IMAGES)
        try:
            return len(self.processor.template.render_prompt(_conversation(messages), num_images))
        except ValueError as error:
            raise UsageError(str(error)) from None

    @property
    def max_length(self) -> int:
        """Prompt and answer together must fit in this many tokens (the LM's max_seq_len)."""
        return self.config.lm.max_seq_len

    # ------------------------------------------------------------------------------- plumbing
    def _encode_text_prompt(self, prompt: str):
        try:
            return self.processor.encode_text_prompt(prompt)
        except ValueError as error:  # empty, or too long to leave room for an answer
            raise UsageError(str(error)) from None

    def _prompt_batch(self, conversations: list[list[dict]], image_lists: list[list[ImageLike]]) -> dict:
        encoded = []
        for conversation, images in zip(conversations, image_lists):
            pictures = [to_pil(image) for image in images]
            try:
                encoded.append(self.processor.encode_prompt(conversation, pictures))
            except ImageError as error:
                raise UsageError(f"unusable image: {error}") from None
            except ValueError as error:  # too long, or <image> markers and images disagree
                raise UsageError(str(error)) from None
        return collate(encoded, pad_id=self.config.pad_token_id, padding_side="left")

    def _answer_batches(self, conversations, image_lists, batch_size: int, options: SamplingOptions,
                        progress: Progress | None = None) -> list[str]:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        answers: list[str] = []
        for start in range(0, len(conversations), batch_size):
            end = start + batch_size
            batch = self._prompt_batch(conversations[start:end], image_lists[start:end])
            answers.extend(self.processor.decode(row).strip() for row in self._generate(batch, options))
            if progress is not None:
                progress(len(answers), len(conversations))
        return answers

    @torch.inference_mode()
    def _generate(self, batch: dict, options: SamplingOptions) -> list[list[int]]:
        return generate(self.model, **self._model_inputs(batch), **asdict(options), decode=self.decode)

    def _stream_text(self, batch: dict, options: SamplingOptions, strip: bool) -> Iterator[str]:
        tokens = (step[0] for step in stream(self.model, **self._model_inputs(batch), **asdict(options),
                                             decode=self.decode))
        yield from decode_incrementally(self.processor.decode, tokens, strip=strip)

    def _model_inputs(self, batch: dict) -> dict:
        keys = ("input_ids", "attention_mask", "pixel_values", "image_counts", "prefix_mask")
        inputs = {k: batch[k].to(self.device) for k in keys if batch.get(k) is not None}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs


def decode_incrementally(decode: Callable[[list[int]], str], tokens: Iterable[int], strip: bool) -> Iterator[str]:
    """Text pieces whose concatenation is `decode(all tokens)` (`.strip()`-ed when strip), as tokens arrive.

    Each new token's text is yielded once it is whole: a token ending inside a multi-byte character waits
    for the rest. With strip, leading whitespace is dropped and trailing whitespace is held back until
    more text follows it, so nothing has to be taken back at the end.
    """
    ids: list[int] = []
    shown = ""  # text yielded so far, as a prefix of decode(ids)
    text = ""
    for token in tokens:
        ids.append(token)
        text = decode(ids)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        ready = text.strip() if strip else text  # grows only at its end as tokens arrive
        piece = ready[len(shown):]
        if piece:
            yield piece
            shown += piece
    final = text.strip() if strip else text
    if len(final) > len(shown):
        yield final[len(shown):]


NO_IMAGES = "this model is a language model alone: it reads no images"


def load(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
         quantize: str | None = None, quantize_method: str = "auto", decode: str = "auto",
         lora: str | Path | None = None, force: bool = False, fuse: bool | None = None) -> VisionLanguageModel:
    """A model ready to use, from an exported model folder or a Lightning checkpoint (`.ckpt`).

    A model folder (config.json, model.safetensors, tokenizer.json) is read as JSON and safetensors: nothing
    is unpickled, so a folder from a stranger cannot run code. A Lightning checkpoint is a pickle, and
    unpickling it can run code: load only checkpoints you trust (`mmllm export` turns one into a folder).
    device: "auto" (default: CUDA when available), "cpu", "cuda"; dtype: "auto" (fp32 on CPU, bf16 on CUDA),
    "float32", "bfloat16" or a torch dtype. quantize "int8" or "int4" quantises the linear layers on the CPU
    with the fastest method for this machine (mmllm.compress.quantization; `quantize_method` names one instead); a
    folder written by `mmllm export --quantize` is quantised as it was saved unless `quantize` says otherwise.
    The result's `quantization` is the QuantizationReport (None in float). decode: how tokens are decoded,
    "auto" (compiled static-cache steps on CUDA, eager elsewhere: mmllm.model.generation.default_decode), "eager",
    "static" or "compiled". lora: an adapter folder (mmllm's, from `mmllm export` of a LoRA run, or PEFT's)
    put on the model and merged into its weights before anything else (mmllm.formats.lora_adapters); one trained
    over an int8 or NF4 base merges into that base dequantised, as `mmllm export --merge-lora` does. An adapter
    (or a LoRA checkpoint) that records another base than `path` is refused unless `force`. fuse: each decoder
    layer's q/k/v and gate/up projections become one linear each (mmllm.model.fused_projections: fewer products per
    token; the model is then for running, not for saving); None (the default): fused when quantising, where it
    measured faster (bench/results/2026-12-07-fused-projections.json: int4 eager decode 54.1 against 51.6 tokens/s;
    float32 23.9 against 26.0, so float models stay separate).
    """
    if decode != "auto" and decode not in DECODES:
        raise UsageError(f"unknown decode {decode!r}; choose one of auto, {', '.join(DECODES)}")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model {path} does not exist")
    if path.is_dir():
        from mmllm.formats.model_folder import load_model_folder

        model, tokenizer, _ = load_model_folder(path)
    else:
        from mmllm.formats.checkpoint import model_from_checkpoint

        try:
            model, tokenizer, _ = model_from_checkpoint(path, force=force)
        except UsageError as error:  # torch's unpickling messages span lines; the command line prints one
            raise UsageError(_one_line(str(error))) from None
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # a checkpoint dict that is not whole
            raise UsageError(
                f"checkpoint {path} does not hold a usable model ({type(error).__name__}: {_one_line(str(error))})"
            ) from None
    if lora is not None:
        from mmllm.formats.lora_adapters import apply_adapter
        from mmllm.model.lora import merge_lora

        model.float()
        apply_adapter(model, lora, base=path, force=force)
        merge_lora(model)
        model.eval()
    saved = None
    if quantize is None and path.is_dir():
        from mmllm.formats.model_folder import read_quantization

        saved = read_quantization(path)
        quantize = f"int{saved['bits']}" if saved else None
    if quantize is not None and device in (None, "auto"):
        device = "cpu"  # quantised weights run where their kernels are, whatever accelerator the machine has
    device = resolve_device(device)
    if saved is not None and device.type != "cpu":
        # asked for an accelerator by name: the folder's integers come back as float weights (load_model_folder
        # restored them) and run there unquantised
        print(f"model {path} holds int{saved['bits']} weights, whose kernels run on the CPU; on {device.type} they "
              f"run dequantised, in {str(resolve_dtype(dtype, device)).removeprefix('torch.')}", file=sys.stderr)
        quantize = None
    model.to(device=device, dtype=resolve_dtype(dtype, device))
    if fuse or (fuse is None and quantize is not None):
        from mmllm.model.fused_projections import fuse_projections

        fuse_projections(model.lm)  # q/k/v and gate/up as one linear each (before quantising: one layer each)
    report = None
    if quantize is not None:
        from mmllm.compress.quantization import parse_bits
        from mmllm.compress.quantization import quantize as quantize_model

        report = quantize_model(model, parse_bits(quantize), quantize_method)
    try:
        vlm = VisionLanguageModel(model, tokenizer, source=str(path))
    except ValueError as error:  # the tokenizer lacks the project's special tokens
        raise UsageError(f"model {path}: {error}") from None
    vlm.quantization = report
    if decode != "auto":
        vlm.decode = decode
    return vlm


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> CUDA when available, else the CPU; a CUDA device asked for without CUDA is a UsageError."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"unknown device {device!r}: {error}") from None


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on the CPU (bf16 matmuls are slow on CPUs without bf16 units), bf16 on GPUs, unless asked."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def to_pil(image: ImageLike) -> Image.Image:
    """A path, PIL image or (3, H, W) tensor in [0, 1] -> an RGB PIL image; a bad path is a UsageError."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (3, H, W) with values in [0, 1], got {tuple(image.shape)}")
        array = (image.detach().float().clamp(0, 1).expand(3, -1, -1) * 255).round().byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
    if isinstance(image, Image.Image):
        return load_image(image)
    if not isinstance(image, (str, Path)):
        raise TypeError(f"an image is a path, a PIL image or a tensor, not {type(image).__name__}")
    path = Path(image)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise UsageError(f"image {path} does not exist")
    try:
        return load_image(path)
    except (ImageError, OSError) as error:
        raise UsageError(f"{path}: {_one_line(str(error))}") from None  # "not a readable image: ..."


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _is_batch(images: Any) -> bool:
    return isinstance(images, (list, tuple))


def _conversation(messages: list[dict]) -> list[dict[str, str]]:
    try:
        return normalise_conversation(messages)
    except ValueError as error:
        raise UsageError(f"bad conversation: {error}") from None
