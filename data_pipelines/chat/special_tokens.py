"""The project's special tokens and the fixed strings of its chat template.

Every tokenizer the project uses (trained here or brought by the user) carries these tokens; any that are
missing are added when it is loaded.
"""

END_OF_TEXT = "<|endoftext|>"  # ends a text document; also a generation stop token
PAD = "<|pad|>"
IMAGE = "<|image|>"  # one placeholder id; the processor repeats it tokens_per_image times per image
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"  # ends every turn; supervised after assistant turns; the chat stop token
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"

SPECIAL_TOKENS = [END_OF_TEXT, PAD, IMAGE, TURN_START, TURN_END, USER, ASSISTANT, SYSTEM]
ROLE_TOKENS = {"user": USER, "assistant": ASSISTANT, "system": SYSTEM}

# How users write an image in a prompt or a LLaVA conversation.
IMAGE_MARKER = "<image>"
# A caption sample is a one-turn chat with this instruction; `mmllm caption` asks exactly the same.
CAPTION_INSTRUCTION = "Describe the image."

