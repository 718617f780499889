"""How a prompt lays out one image's tokens: the tile blocks and the markup tokens around them.

An image is one block of `tokens_per_image` image tokens, or, with Idefics3's image splitting, a grid of
tiles followed by the whole image scaled down (the "global" image), one block each. `image_layout` gives the
pieces in prompt order; the chat templates turn them into ids or text. The layout is transformers'
Idefics3Processor's, which llama.cpp's runtime also builds:

    rows x cols == 0 x 0:  <fake><global-img> BLOCK <fake>
    2 x 2:                 <fake><row_1_col_1> BLOCK <fake><row_1_col_2> BLOCK "\\n"
                           <fake><row_2_col_1> BLOCK <fake><row_2_col_2> BLOCK "\\n"
                           "\\n" <fake><global-img> BLOCK <fake>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"
IDEFICS3_IMAGE_OPEN = (FAKE_TOKEN, GLOBAL_IMAGE)
IDEFICS3_IMAGE_CLOSE = (FAKE_TOKEN,)
MAX_GRID_SIDE = 6  # Idefics3 tokenizers carry <row_i_col_j> for i, j in 1..6


def tile_token(row: int, col: int) -> str:
    """The token before tile (row, col), both counted from 1."""
    return f"<row_{row}_col_{col}>"


def tile_tokens(max_side: int = MAX_GRID_SIDE) -> list[str]:
    return [tile_token(row, col) for row in range(1, max_side + 1) for col in range(1, max_side + 1)]


@dataclass(frozen=True)
class Piece:
    """One piece of an image's layout: a special token, plain text, or one image block (a tile or the whole)."""

    kind: Literal["token", "text", "block"]
    value: str = ""


BLOCK = Piece("block")


def image_layout(markup: str, rows: int = 0, cols: int = 0) -> list[Piece]:
    """The pieces of one image with a rows x cols grid of tiles (0 x 0: not split) under `markup`.

    Adjacent text is joined ("\\n" after the last row and the "\\n" before the global image are one "\\n\\n"),
    so a tokenizer sees the same text as in transformers' rendered prompt.
    """
    if markup == "none":
        if rows or cols:
            raise ValueError("image splitting needs image_markup idefics3 (its tiles are told apart by row/col tokens)")
        return [BLOCK]
    if markup != "idefics3":
        raise ValueError(f"image_markup must be 'none' or 'idefics3', got {markup!r}")
    whole = [Piece("token", FAKE_TOKEN), Piece("token", GLOBAL_IMAGE), BLOCK, Piece("token", FAKE_TOKEN)]
    if not rows and not cols:
        return whole
    pieces: list[Piece] = []
    for row in range(1, rows + 1):
        for col in range(1, cols + 1):
            pieces += [Piece("token", FAKE_TOKEN), Piece("token", tile_token(row, col)), BLOCK]
        pieces.append(Piece("text", "\n"))
    pieces.append(Piece("text", "\n"))
    pieces += whole
    return _joined(pieces)


def _joined(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for piece in pieces:
        if out and piece.kind == "text" and out[-1].kind == "text":
            out[-1] = Piece("text", out[-1].value + piece.value)
        else:
            out.append(piece)
    return out


def check_markup_tokens(tokenizer, markup: str) -> None:
    """ValueError for an unknown markup, or when the tokenizer lacks the tokens around every image."""
    image_layout(markup)
    if markup == "idefics3":
        missing = [t for t in (*IDEFICS3_IMAGE_OPEN, *IDEFICS3_IMAGE_CLOSE) if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"image_markup idefics3 needs the tokens {missing} in the tokenizer")


def token_id(tokenizer, piece: Piece, rows: int, cols: int) -> int:
    """The id of a layout's token piece; ValueError naming the grid when the tokenizer lacks it."""
    found = tokenizer.token_to_id(piece.value)
    if found is None:
        raise ValueError(f"the tokenizer has no {piece.value}, which an image split into {rows} x {cols} tiles needs")
    return found

