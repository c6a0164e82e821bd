"""The online scoring endpoint that scoring/score.py serves: the request handler and its published schema."""
