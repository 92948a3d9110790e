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
    several = result["conversations_with_several_exchanges"]
    assert 0 < several < 60  # both kinds of conversation are in the sample
    assert result["single_render"]["token_ids_differ_from_apply_chat_template"] == 0
    slime_qwen3 = result["slime_qwen3_type"]
    # Rendered next to an anchor user turn, every assistant message is "after the last user turn", so Qwen3's
    # template gives each one the empty thinking block it writes only for the final exchange: exactly the
    # conversations with more than one exchange differ, and for that reason alone.
    assert slime_qwen3["token_ids_differ_from_apply_chat_template"] == several
    (reason,) = slime_qwen3["why_token_ids_differ"]
    assert reason.startswith("an empty thinking block on earlier assistant turns")
    # Where the ids agree (single exchanges), slime's type also trains the newline after each end-of-turn token.
    assert slime_qwen3["same_ids_but_loss_mask_differs_from_single_render"] == 60 - several
    assert slime_qwen3["tokens_trained_only_by_this_type"] == {"'\\n' after '<|im_end|>'": 60 - several}
    assert slime_qwen3["tokens_trained_only_by_single_render"] == {}
    for method in ("single_render", "slime_qwen3_type"):
        assert result[method]["conversations_per_s"] > 50, result[method]  # ~1,000/s on 2 cores: not a stall
