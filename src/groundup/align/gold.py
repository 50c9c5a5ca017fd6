"""The gold judge: a fixed, programmatic stand-in for the human who labels preferences.

    gold(y) = VADER compound sentiment of the decoded continuation y ∈ [−1, 1]
              (Hutto & Gilbert 2014: a hand-built lexicon of ~7,500 words rated −4..+4, with rules
               for negation, intensifiers, "but", capitals and punctuation; the compound score is
               the normalised sum s / √(s² + 15))

Only the continuation is judged, not the prompt: the policy is rewarded for what it writes. Text with
no lexicon word scores exactly 0, so a continuation must be long enough to hold words. For the char
models this project trains (configs/shakespeare_char.toml: a 64-token context), DEFAULT_LENGTH = 48
characters (≈ 8–10 words) after a 16-character prompt fills the context: on 400 random windows of
the Shakespeare text itself, 58 % of 48-character windows score ≠ 0 (16 characters: 25 %,
32: 43 %, 64: 67 %), so the reward carries signal on most samples. A model with a longer context can
take --length 64.

The vaderSentiment package (MIT) ships its lexicon inside the wheel: nothing is downloaded.
"""

from __future__ import annotations

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

DEFAULT_LENGTH = 48  # tokens of continuation (characters for a char model): long enough to hold words
NAME = "vader-compound"  # what meta records and align.json name the gold reward


class GoldJudge:
    """VADER compound sentiment in [−1, 1] of each text (0 for text without sentiment words)."""

    name = NAME

    def __init__(self):
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> list[float]:
        """compound(text) for each text, in order."""
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in texts]

    def score_ids(self, tokenizer, continuations) -> list[float]:
        """The score of each row of continuation token ids (a (B, L) tensor or lists), decoded with
        the policy's tokenizer (invalid UTF-8 replaced, as sampling prints it)."""
        return self.score([tokenizer.decode([int(t) for t in row]) for row in continuations])
