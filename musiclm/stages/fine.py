"""The fine stage: coarse codec levels -> the remaining levels (paper: 3 s crops, temperature
0.4). As in AudioLM it sees the coarse tokens only, unless ``fine_sees_mulan`` is set.

Everything but the layout is shared: ``token_lm_stage.TokenLMStage``, ``token_layout``.
"""

from __future__ import annotations

from musiclm.stages.token_lm_stage import TokenLMStage


class FineStage(TokenLMStage):
    """Coarse levels -> fine levels."""

    stage = "fine"
