"""`mmllm ask` about a clip: the answer is the model's answer to the multi-image chat of the clip's frames with their
timestamps (the layout training reads), and a clip that cannot be used is refused in one line."""

from __future__ import annotations

import io

import pytest
from inference_helpers import run_mmllm
from PIL import Image

from data_pipelines.video import VideoOptions, decode_frames, frames_text

SAMPLED = ("--temperature", "1.0", "--seed", "3", "--max-new-tokens", "8")
pytest.importorskip("av")  # mmllm[video]


@pytest.fixture(scope="module")
def gif(trained, tmp_path_factory):
    """A 1.5 s animated GIF of three of the trained model's images, half a second each."""
    frames = [Image.open(path).convert("RGB") for path in sorted(trained.images.glob("*.png"))[:3]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=500, loop=0)
    path = tmp_path_factory.mktemp("clips") / "clip.gif"
    path.write_bytes(buffer.getvalue())
    return path


def test_ask_about_a_clip_answers_the_chat_of_its_timestamped_frames(trained, vlm, gif, one_thread):
    question = "What colour is the circle?"
    result = run_mmllm("ask", "--model", trained.model, gif, question, "--frames", "3", *SAMPLED)
    assert result.returncode == 0, result.stderr
    frames, duration = decode_frames(gif.read_bytes(), VideoOptions(frames=3))
    assert [round(time, 1) for time, _ in frames] == [0.0, 0.5, 1.0] and duration == pytest.approx(1.5)
    turn = {"role": "user", "content": frames_text([t for t, _ in frames], duration) + "\n" + question}
    expected = vlm.chat([turn], [image for _, image in frames], temperature=1.0, seed=3, max_new_tokens=8)
    assert result.stdout == expected + "\n"


@pytest.mark.parametrize("clip, options, said", [
    (b"\x00\x00\x00\x18ftypmp42" + bytes(64), [], "unusable clip"),
    (None, ["--max-seconds", "1"], "above the limit of 1 s"),
])
def test_an_unusable_clip_is_refused_in_one_line(trained, gif, tmp_path, capsys, clip, options, said):
    from mmllm.cli.main import main

    path = gif
    if clip is not None:
        path = tmp_path / "broken.mp4"
        path.write_bytes(clip)
    capsys.readouterr()
    assert main(["ask", "--model", str(trained.model), str(path), "What moves?", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
