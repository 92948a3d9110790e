"""train.py end to end with a custom prompt + label rollout plugin and `--loss-type sft_loss` (slime's plugin style):
the data source hands the plugin every row, the run derives its length from --num-epoch, and the loss falls."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_train_py_with_a_prompt_label_plugin_and_sft_loss(tmp_path):
    subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "quickstart" / "make_model.py"), "--output-dir",
                    str(tmp_path / "model"), "--hidden-size", "32", "--layers", "1"], check=True, capture_output=True)
    # Prompts without an assistant turn: the SFT reader would skip these rows; this plugin trains on their labels.
    rows = [{"prompt": [{"role": "user", "content": f"Repeat: {w}"}], "label": w}
            for w in ["apple", "river", "stone", "cloud"] * 4]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    flags = ["--actor-num-gpus-per-node", "1", "--hf-checkpoint", str(tmp_path / "model"),
             "--load", str(tmp_path / "model"),
             "--rollout-function-path", "examples.custom_rollout.prompt_label_sft.generate_rollout",
             "--prompt-data", str(tmp_path / "data.jsonl"), "--input-key", "prompt", "--label-key", "label",
             "--num-epoch", "3", "--rollout-batch-size", "8", "--global-batch-size", "8",
             "--loss-type", "sft_loss", "--calculate-per-token-loss", "--disable-compute-advantages-and-returns",
             "--debug-train-only", "--lr", "2e-2", "--lr-decay-style", "constant", "--attention-dropout", "0",
             "--hidden-dropout", "0", "--data-pad-size-multiplier", "8"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *flags], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "6 rollouts to train (2 per epoch, 16 usable rows)" in output  # 16 rows // 8, times 3 epochs
    match = re.search(r"done: first_loss ([\d.]+), last_loss ([\d.]+)", output)
    assert match, output[-3000:]
    first, last = float(match[1]), float(match[2])
    assert last < 0.7 * first, (first, last)
