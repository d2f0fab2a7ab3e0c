"""The class labels of the class tasks (the original study's next-day move; a post's sentiment), in the order
every score column, head output and confusion matrix uses. Kept apart from the lake's polars schemas so the
training code imports without polars (the GPU image has none)."""

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")
