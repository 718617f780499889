"""The compiled decode step's life around the compiler (mmllm.model.compiled_decode): its first compile is announced
in one line and recorded in the cache folder, so a later process (a new step object) says nothing; a compile that
fails falls back, in one line, to the uncompiled step and its tokens; `import mmllm` points Inductor's caches at
mmllm's cache folder unless the user chose one. The compiler itself is stubbed here (its tokens are tested in
test_static_decode, its speed and disk cache in bench/compiled_decode.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import mmllm.model.compiled_decode as compiled_decode
from mmllm.model.generation import default_decode, generate, static_shapes
from test_static_decode import _batch


def _steps(monkeypatch, tmp_path, compile_as):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch, "compile", lambda function, **options: compile_as(function))
    monkeypatch.setattr(compiled_decode, "_STEPS", {})


def test_the_first_compile_is_announced_once_and_recorded_for_later_processes(make_model, make_prompt, make_images,
                                                                               monkeypatch, tmp_path, capsys):
    _steps(monkeypatch, tmp_path, compile_as=lambda function: function)
    model = make_model()
    assert default_decode("cpu", session=True, model=model) == "eager"  # never compiled: chat decodes eagerly
    inputs, options = _batch(model, make_prompt, make_images)
    eager = generate(model, **inputs, **options)
    assert generate(model, **inputs, **options, decode="compiled") == eager
    assert generate(model, **inputs, **options, decode="compiled") == eager
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmllm:")]
    rows, length = static_shapes(3, inputs["input_ids"].size(1) + 20, model.config.lm.max_seq_len, compiled=True)
    assert len(said) == 1 and f"compiling the decode step for this model and {length} positions once" in said[0]
    assert str(tmp_path / "inductor") in said[0]
    record = json.loads((tmp_path / "inductor" / compiled_decode.RECORD).read_text())
    assert len(record) == 1 and next(iter(record.values()))["layers"] == model.config.lm.n_layers
    assert next(iter(record)).endswith(f":{rows}x{length}")
    assert default_decode("cpu", session=True, model=model) == "compiled"  # chat's default, now it is on disk
    assert default_decode("cpu", session=False, model=model) == "eager"
    monkeypatch.setattr(compiled_decode, "_STEPS", {})  # a later process: a new step object, the same disk
    assert generate(model, **inputs, **options, decode="compiled") == eager
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmllm:")]


def test_a_failed_compile_says_so_in_one_line_and_decodes_uncompiled(make_model, make_prompt, make_images,
                                                                     monkeypatch, tmp_path, capsys):
    def broken(function):
        def run(*args):
            raise RuntimeError("C++ compile error:\nno compiler\nfound")
        return run

    _steps(monkeypatch, tmp_path, compile_as=broken)
    model = make_model()
    inputs, options = _batch(model, make_prompt, make_images)
    assert generate(model, **inputs, **options, decode="compiled") == generate(model, **inputs, **options)
    failed = [line for line in capsys.readouterr().err.splitlines() if "step failed" in line]
    assert failed == ["mmllm: compiling the decode step failed (RuntimeError: C++ compile error: no compiler found); "
                      "decoding uncompiled"]
    assert not (tmp_path / "inductor" / compiled_decode.RECORD).exists()


def test_mmllm_keeps_inductors_caches_in_its_cache_folder_unless_the_user_chose_one(tmp_path):
    def folder(**env):
        environment = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"} | env
        return subprocess.run([sys.executable, "-c", "import os, mmllm; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"],
                              env=environment, capture_output=True, text=True, check=True).stdout.strip()

    assert folder(MMLLM_CACHE_DIR=str(tmp_path)) == str(tmp_path / "inductor")
    assert folder(MMLLM_CACHE_DIR=str(tmp_path), TORCHINDUCTOR_CACHE_DIR="/elsewhere") == "/elsewhere"


def test_a_cache_folder_that_cannot_be_written_costs_a_line_not_the_generation(make_model, make_prompt, make_images,
                                                                                monkeypatch, tmp_path, capsys):
    _steps(monkeypatch, tmp_path, compile_as=lambda function: function)
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "a file"))  # a folder that can never be made
    model = make_model()
    inputs, options = _batch(model, make_prompt, make_images)
    assert generate(model, **inputs, **options, decode="compiled") == generate(model, **inputs, **options)
    said = [line for line in capsys.readouterr().err.splitlines() if "could not record" in line]
    assert len(said) == 1 and "the next run compiles it again" in said[0]
