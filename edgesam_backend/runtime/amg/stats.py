"""Counters and timings of one generator call (``AutomaticMaskGenerator.last_stats``)."""

from __future__ import annotations

from typing import Any


def new_stats(mode: str, quality_score: str) -> dict[str, Any]:
    """Zeroed stats of one call: ``mode`` ("grid" / "coverage" / "boxes"), the quality score, candidate
    counts after each stage, and seconds spent in the encoder, decoder, upscaling and everything else.
    Coverage mode also fills ``level_prompts`` (prompts per level, per crop in order),
    ``proposal_prompts`` and ``coverage`` (covered share of each crop after its last level)."""
    return {
        "mode": mode,
        "quality_score": quality_score,
        "crops": 0,
        "level_prompts": [],
        "proposal_prompts": 0,
        "coverage": [],
        "encoder_calls": 0,
        "decoder_calls": 0,
        "prompts": 0,
        "candidates": 0,
        "after_quality_filter": 0,
        "after_edge_filter": 0,
        "after_box_nms": 0,
        "after_crop_nms": 0,
        "after_small_regions": 0,
        "masks": 0,
        "encoder_s": 0.0,
        "decoder_s": 0.0,
        "upscale_s": 0.0,
        "postprocess_s": 0.0,
        "total_s": 0.0,
    }


def close_stats(st: dict[str, Any], total_s: float, masks: int) -> None:
    """Final counts: ``total_s`` wall time; ``postprocess_s`` is what encoder and decoder did not take."""
    st["masks"] = masks
    st["total_s"] = total_s
    st["postprocess_s"] = total_s - st["encoder_s"] - st["decoder_s"]
