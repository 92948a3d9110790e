"""One process of the tensor-parallel fused log-prob test (gloo, TP = world size). Rank 0 writes the largest
differences from the full-vocabulary reference to --out.

  python log_probs_worker.py --rank R --world-size N --port P --out result.pt
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    options = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from megatron_helpers import plain_log_probs

    from megatron.core import parallel_state

    from slime.backends.megatron_utils.log_probs import vocab_parallel_log_probs

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{options.port}", rank=options.rank,
                            world_size=options.world_size)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=options.world_size)
    tp, rank = options.world_size, parallel_state.get_tensor_model_parallel_rank()
    results = {}
    for dtype, temperature, chunk in ((torch.float64, 1.0, None), (torch.float32, 0.7, 5), (torch.float32, 1.3, 1)):
        generator = torch.Generator().manual_seed(0)
        tokens, vocab = 40, 24 * tp
        full = (torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * 4).to(dtype)
        targets = torch.randint(0, vocab, (tokens,), generator=generator)
        rows = [(1, 9), (12, 13), (20, 39)]
        upstream = torch.randn(2, sum(e - s for s, e in rows), generator=generator, dtype=torch.float64)
        shard = full.chunk(tp, dim=-1)[rank].clone().requires_grad_()
        log_probs, entropy = vocab_parallel_log_probs(shard, rows, targets, temperature, with_entropy=True,
                                                      chunk_size=chunk)
        ((log_probs * upstream[0].to(log_probs)).sum() + (entropy * upstream[1].to(entropy)).sum()).backward()
        grads = [torch.empty_like(shard) for _ in range(tp)]
        dist.all_gather(grads, shard.grad)
        reference = full.clone().requires_grad_()
        ref_log_probs, ref_entropy = plain_log_probs(reference, rows, targets, temperature)
        ((ref_log_probs * upstream[0].to(ref_log_probs)).sum()
         + (ref_entropy * upstream[1].to(ref_entropy)).sum()).backward()
        results[f"{dtype}-{temperature}-{chunk}"] = {
            "log_probs": (log_probs - ref_log_probs).abs().max().item(),
            "entropy": (entropy - ref_entropy).abs().max().item(),
            "grad": (torch.cat(grads, dim=-1) - reference.grad).abs().max().item(),
            "grad_scale": reference.grad.abs().max().item(),
        }
    if options.rank == 0:
        torch.save(results, options.out)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
