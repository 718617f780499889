"""Chat about images, turn by turn, from stdin (/image PATH, /reset, /quit).

Each line you type is a user turn; the answer is printed; the history is kept.

Lines starting with / are commands:
  /image PATH   attach an image to your next message (as many as you like, mid-conversation too)
  /reset        forget the conversation and its images
  /quit         leave (end of input does the same)
When the conversation no longer fits the model's context, its oldest exchanges are dropped. Works with
stdin from a pipe or a file too: mmllm chat --model M first.png < questions.txt
"""

from __future__ import annotations

import argparse
import sys

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, print_stream, sampling
from mmllm.errors import UsageError

IMAGE_MARKER = "<image>"
HELP = "commands: /image PATH (attach an image to your next message), /reset, /quit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="an image for your first message")
    add_model_arguments(parser)
    add_sampling_arguments(parser)


class ChatSession:
    """The conversation so far, its images in marker order, and the images waiting for the next message."""

    def __init__(self, vlm, options: dict) -> None:
        self.vlm = vlm
        self.options = options
        self.messages: list[dict[str, str]] = []
        self.images: list = []  # PIL images of self.messages, in marker order
        self.pending: list = []  # attached with /image, sent with the next message

    def attach(self, path: str) -> None:
        from mmllm.inference import NO_IMAGES, to_pil

        if not self.vlm.config.reads_images:
            raise UsageError(NO_IMAGES)
        self.pending.append(to_pil(path))  # UsageError for a missing or unreadable file

    def reset(self) -> None:
        self.messages, self.images, self.pending = [], [], []

    def ask(self, text: str, stream: bool) -> str:
        """Send one user message (with the pending images) and return the answer, printing it."""
        if IMAGE_MARKER in text:
            raise UsageError(f"write {IMAGE_MARKER} by attaching an image with /image PATH, not in the text")
        content = (IMAGE_MARKER + "\n") * len(self.pending) + text  # as question_conversation
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + self.pending
        messages, images = self._fit(messages, images)
        if stream:
            answer = print_stream(self.vlm.stream_chat(messages, images, **self.options))
        else:
            answer = self.vlm.chat(messages, images, **self.options)
            print(answer, flush=True)
        self.messages = messages + [{"role": "assistant", "content": answer}]
        self.images, self.pending = images, []
        return answer

    def _fit(self, messages: list[dict], images: list) -> tuple[list[dict], list]:
        """Drop the oldest user/assistant exchanges (and their images) until the prompt leaves room to answer."""
        while self.vlm.prompt_length(messages, len(images)) >= self.vlm.max_length:
            if len(messages) < 3:
                raise UsageError(
                    f"your message does not fit in the model's {self.vlm.max_length} tokens with room for an answer"
                )
            dropped_images = sum(turn["content"].count(IMAGE_MARKER) for turn in messages[:2])
            messages, images = messages[2:], images[dropped_images:]
            print("(the oldest exchange was dropped to fit the model's context)", file=sys.stderr)
        return messages, images


def run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    vlm = load_model(args)
    if args.decode == "auto":
        from mmllm.model.generation import default_decode

        vlm.decode = default_decode(vlm.device, session=True, model=vlm.model)  # compiled when on disk already
    session = ChatSession(vlm, sampling(args))
    if args.image:
        session.attach(args.image)  # a bad first image ends the command (exit 2) before any chat
    if interactive:
        print(f"chatting with {args.model}; {HELP}", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                command, _, argument = line.partition(" ")
                if command in ("/quit", "/exit"):
                    break
                if command == "/reset":
                    session.reset()
                    print("(conversation reset)", file=sys.stderr)
                elif command == "/image" and argument.strip():
                    session.attach(argument.strip())
                    print(f"(image {argument.strip()} attached to your next message)", file=sys.stderr)
                else:
                    print(HELP, file=sys.stderr)
                continue
            session.ask(line, stream=args.stream or interactive)
        except UsageError as error:  # one bad image or message does not end the conversation
            print(f"mmllm: error: {error}", file=sys.stderr)
    return 0
