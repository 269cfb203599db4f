"""`sam-eval`: score any SAM checkpoint on a dataset with validation's own code, plus a random
interior point, segment-everything proposal recall, plots and an eval.json."""
