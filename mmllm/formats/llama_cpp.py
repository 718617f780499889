"""Greedy answers from llama.cpp itself (through llama-cpp-python's bindings of llama.h and mtmd.h) for a GGUF
language model and its mmproj, written by `mmllm export --format gguf`: the prompt text goes to mtmd's
tokenizer, which cuts the image into tiles and lays out their tokens as llama.cpp does, then the chunks are
evaluated and the argmax token is fed back. Used by the GGUF tests and bench/gguf_agreement.py; needs
llama-cpp-python (built from source by .ci/setup)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def last_logits(llama_cpp, llm) -> np.ndarray:
    """The logits llama.cpp left for the last evaluated position, (n_vocab,), copied out of its buffer."""
    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def greedy_continue(llama_cpp, llm, stop_ids: list[int], max_new_tokens: int) -> list[int]:
    """Token ids chosen greedily after what `llm` has evaluated, each fed back; the stop token excluded."""
    answer: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(last_logits(llama_cpp, llm)))
        if token in stop_ids:
            break
        answer.append(token)
        llm.eval([token])
    return answer


class LlamaCpp:
    """One llama.cpp model + mmproj, on one CPU thread; `answer` is greedy decoding from a prompt with images."""

    def __init__(self, model: Path, mmproj: Path, n_ctx: int = 512):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self.llama_cpp, self.mtmd = llama_cpp, mtmd
        # mtmd logs every image it encodes to stderr; a callback that drops the lines keeps reports readable.
        self._quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        mtmd.mtmd_log_set(self._quiet, None)
        mtmd.mtmd_helper_log_set(self._quiet, None)
        self.llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, verbose=False)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, 1, False, False
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not load {mmproj}")
        self.marker = mtmd.mtmd_default_marker().decode()

    def close(self) -> None:
        self.mtmd.mtmd_free(self.ctx)
        self.llm.close()

    def question_prompt(self, chat_template: str, question: str) -> str:
        """The prompt `mmllm ask` renders for one question about one image, with llama.cpp's media marker where
        the image goes (mtmd then writes the image's tiles and markup tokens there itself)."""
        from data_pipelines.chat import special_tokens as st
        from data_pipelines.chat.conversation import question_conversation
        from data_pipelines.chat.jinja_template import compile_template, parts_of_content

        turn = question_conversation(question)[0]
        messages = [{"role": "user", "content": parts_of_content(turn["content"])}]
        text = compile_template(chat_template).render(messages=messages, add_generation_prompt=True)
        return text.replace(st.IMAGE_MARKER, self.marker)

    def answer(self, prompt: str, images: list[Path], stop_ids: list[int], max_new_tokens: int) -> list[int]:
        """Token ids generated greedily after `prompt` (each image where the marker is), stop token excluded."""
        mtmd = self.mtmd
        bitmaps = [mtmd.mtmd_helper_bitmap_init_from_file(self.ctx, str(path).encode(), False) for path in images]
        text = mtmd.mtmd_input_text()
        encoded = prompt.encode()
        text.text, text.text_len, text.add_special, text.parse_special = encoded, len(encoded), True, True
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            if mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), array, len(bitmaps)) != 0:
                raise RuntimeError("llama.cpp could not tokenize the prompt")
            self.llm.reset()
            self.llm._ctx.kv_cache_clear()
            past = self.llama_cpp.llama_pos(0)
            if mtmd.mtmd_helper_eval_chunks(self.ctx, self.llm._ctx.ctx, chunks, 0, 0, self.llm.n_batch, True,
                                            ctypes.byref(past)) != 0:
                raise RuntimeError("llama.cpp could not evaluate the prompt")
            self.llm.n_tokens = past.value
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        return greedy_continue(self.llama_cpp, self.llm, stop_ids, max_new_tokens)


class LlamaCppText:
    """One llama.cpp language model (no mmproj): its tokenizer and greedy decoding from token ids, as the GGUF
    import tests and bench/vs_llama_cpp.py compare them with mmllm's."""

    def __init__(self, model: Path, n_ctx: int = 1024, n_threads: int = 1):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads,
                                   n_threads_batch=n_threads, verbose=False)

    def close(self) -> None:
        self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        """llama_tokenize with special tokens parsed (as a chat template's text needs) and no BOS added."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def last_logits(self) -> np.ndarray:
        return last_logits(self.llama_cpp, self.llm)

    def greedy(self, prompt: list[int], stop_ids: list[int], max_new_tokens: int) -> list[int]:
        """Token ids generated greedily after the prompt's ids, the stop token excluded."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        self.llm.eval(prompt)
        return greedy_continue(self.llama_cpp, self.llm, stop_ids, max_new_tokens)
