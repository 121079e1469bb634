"""Content safety: the prompt filter's word matching (`words`) and the settings of both
filters (`settings`). The prompt filter runs in the service (`service/moderation.py`), the
output filter where the images are made (`inference/safety.py`)."""
