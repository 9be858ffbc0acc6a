"""The semantic stage: MuLan tokens M -> semantic tokens S (paper: 30 s crops, temperature 1.0).

Everything but the layout is shared: ``token_lm_stage.TokenLMStage``, ``token_layout``.
"""

from __future__ import annotations

from musiclm.stages.token_lm_stage import TokenLMStage


class SemanticStage(TokenLMStage):
    """M -> S."""

    stage = "semantic"
