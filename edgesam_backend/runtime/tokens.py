"""EdgeSAM's mask-token selection (``num_multimask_outputs``), shared by every back end."""

from __future__ import annotations

#: Which of the 4 mask tokens each ``num_multimask_outputs`` returns: 1 → token 0 (single-mask
#: token), 3 → tokens 1..3 (SAM's multimask set), 4 → all.
TOKEN_SELECTION: dict[int, slice] = {1: slice(0, 1), 3: slice(1, 4), 4: slice(0, 4)}


def select_tokens(num_multimask_outputs: int) -> slice:
    """Token slice for ``num_multimask_outputs`` ∈ {1, 3, 4}; anything else raises ``ValueError``."""
    try:
        return TOKEN_SELECTION[int(num_multimask_outputs)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs!r}") from None
