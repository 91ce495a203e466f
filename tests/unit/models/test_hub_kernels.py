"""transformers ≥ 5.25 would fetch Hub kernels at load time (use_kernels defaults to on): capfilt turns that off."""

import subprocess
import sys


def _kernels_enabled(env: dict[str, str]) -> str:
    code = ("import pipeline.models.loading\n"
            "from transformers.integrations.hub_kernels import _kernels_enabled\n"
            "print(_kernels_enabled())")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_model_loading_never_fetches_hub_kernels_unless_the_user_asks():
    import os

    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    assert _kernels_enabled(env) == "False"
    assert _kernels_enabled({**env, "USE_HUB_KERNELS": "1"}) == "True"  # the user's own setting wins
