"""``musiclm demo``: the whole system end to end on the demo corpus, as resumable steps."""
