"""The loss-mask benchmark runs (tiny) so it cannot rot, and its comparison says what it should."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_bench_loss_mask_tiny(tmp_path, qwen3_tokenizer_dir):
    out = tmp_path / "loss_mask.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_loss_mask.py"), "--conversations", "60",
                    "--output", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["single_render"]["token_ids_differ_from_apply_chat_template"] == 0
    # Per-message renders give Qwen3 every assistant turn the final turn's empty thinking block.
    assert result["per_message_render"]["token_ids_differ_from_apply_chat_template"] == 60
    assert result["single_render"]["conversations_per_s"] > 0
