"""Run ``transferkit`` under torchrun with rank 1 dying (``os._exit``, as a crash or kill -9) at
its first step after epoch 1's evaluation; for tests/test_distributed.py."""

import os
import sys

from transferkit.cli import main
from transferkit.methods.dann import DANN
from transferkit.training import loop

if os.environ.get("RANK") == "1":
    evaluated = []
    real_scores, real_losses = loop.scores, DANN.losses

    def scores(*args, **kwargs):
        evaluated.append(1)
        return real_scores(*args, **kwargs)

    def losses(self, *args, **kwargs):
        if evaluated:
            os._exit(1)
        return real_losses(self, *args, **kwargs)

    loop.scores, DANN.losses = scores, losses

sys.exit(main(sys.argv[1:]))
