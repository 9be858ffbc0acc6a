"""The coarse stage: MuLan tokens M + semantic tokens S -> the first ``coarse_levels`` codec
levels, flattened frame by frame (paper: 4 levels, 10 s crops, temperature 0.95).

Everything but the layout is shared: ``token_lm_stage.TokenLMStage``, ``token_layout``.
"""

from __future__ import annotations

from musiclm.stages.token_lm_stage import TokenLMStage


class CoarseStage(TokenLMStage):
    """M + S -> coarse codec levels."""

    stage = "coarse"
