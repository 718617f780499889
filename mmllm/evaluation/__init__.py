"""Evaluation metrics for `mmllm eval`: VQAv2 accuracy, caption BLEU-4/CIDEr-D, text loss/perplexity/bpb.

Pure functions over predictions and references (no model here); pycocoevalcap is imported only when
captions are scored.
"""

from mmllm.evaluation.caption_metrics import CaptionScores, caption_exact_match, caption_scores, tokenize_caption
from mmllm.evaluation.report import build_report, format_report, format_table
from mmllm.evaluation.text_metrics import (
    TextNLLTotals,
    TextScores,
    bits_per_byte,
    perplexity,
    text_scores,
    utf8_byte_count,
)
from mmllm.evaluation.vqa_metric import VQAScores, normalize_vqa_answer, vqa_accuracy, vqa_scores

__all__ = [
    "CaptionScores", "caption_exact_match", "caption_scores", "tokenize_caption",
    "build_report", "format_report", "format_table",
    "TextNLLTotals", "TextScores", "bits_per_byte", "perplexity", "text_scores", "utf8_byte_count",
    "VQAScores", "normalize_vqa_answer", "vqa_accuracy", "vqa_scores",
]
