"""Weight updates of the CPU engine from disk, from shared-memory tensors and over a gloo group: each changes the
served outputs to those of the pushed weights (checked against transformers) and bumps the weight version; the
per-tensor checksums behind --check-weight-update-equal."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine_helpers import free_port, generate, get, hf_greedy, load_model, post
from slime.backends.sglang_utils.weight_sync import (
    broadcast_bucket, flatten_bucket, init_custom_process_group, serialize_bucket)

PROMPT = [510, 3011, 4, 77, 1200]
NEW = 12


def served(engine) -> dict:
    return generate(engine.url, PROMPT, temperature=0, max_new_tokens=NEW)


def perturbed(model, seed: int):
    """Model A's weights plus noise: a distinct weight set per test, whatever order the tests run in."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return other


def unique_params(model) -> list[tuple[str, torch.Tensor]]:
    return [(name, param.detach().contiguous()) for name, param in model.named_parameters()]


def test_update_from_disk_changes_outputs_and_version(engine_b, model_dir_b):
    before = served(engine_b)["output_ids"]
    reply = post(engine_b.url, "/update_weights_from_disk", {"model_path": model_dir_b, "weight_version": "disk-1"})
    assert reply.status_code == 200
    assert reply.json() == {"success": True, "num_paused_requests": 0,
                            "message": "Succeeded to update model weights. Weight version updated to disk-1."}
    after = served(engine_b)
    assert after["output_ids"] == hf_greedy(load_model(model_dir_b), PROMPT, NEW) != before
    assert after["meta_info"]["weight_version"] == "disk-1"
    assert get(engine_b.url, "/get_weight_version").json() == {"weight_version": "disk-1"}
    assert get(engine_b.url, "/model_info").json()["model_path"] == model_dir_b

    missing = post(engine_b.url, "/update_weights_from_disk",
                   {"model_path": "/nonexistent/ckpt", "weight_version": "x"})
    assert missing.status_code == 400 and missing.json()["success"] is False
    assert "/nonexistent/ckpt" in missing.json()["message"]
    assert served(engine_b)["output_ids"] == after["output_ids"]  # a failed update leaves the weights alone
    assert get(engine_b.url, "/get_weight_version").json() == {"weight_version": "disk-1"}


def test_update_from_tensor_in_shared_memory(engine_b, model_a):
    target = perturbed(model_a, seed=11)
    named = unique_params(target)
    previous = mp.get_sharing_strategy()
    try:
        for i, (bucket, load_format) in enumerate([(named[:5], "flattened_bucket"), (named[5:], None)]):
            payload, keep_alive = serialize_bucket(bucket, load_format)
            version = "tensor-1" if i == 1 else None
            reply = post(engine_b.url, "/update_weights_from_tensor", {
                "serialized_named_tensors": [payload], "load_format": load_format, "flush_cache": False,
                "weight_version": version})
            assert reply.status_code == 200 and reply.json()["success"], reply.text
            del keep_alive
        assert reply.json()["message"] == "Success Weight version updated to tensor-1."
        after = served(engine_b)
        assert after["output_ids"] == hf_greedy(target, PROMPT, NEW)
        assert after["meta_info"]["weight_version"] == "tensor-1"

        payload, keep_alive = serialize_bucket([("model.no_such.weight", torch.zeros(2))])
        bad = post(engine_b.url, "/update_weights_from_tensor", {"serialized_named_tensors": [payload],
                                                                 "load_format": "flattened_bucket"})
        assert bad.status_code == 400 and "unknown parameter name 'model.no_such.weight'" in bad.json()["message"]
    finally:
        mp.set_sharing_strategy(previous)


def test_update_over_a_gloo_group_in_buckets(engine_b, model_a):
    port, name = free_port(), "slime-pp_0"
    with ThreadPoolExecutor(1) as pool:
        # The trainer's order: fire the engine's join, then build its own rank-0 side, then read the reply.
        joined = pool.submit(post, engine_b.url, "/init_weights_update_group", {
            "master_address": "127.0.0.1", "master_port": port, "rank_offset": 1, "world_size": 2,
            "group_name": name, "backend": "gloo"})
        group = init_custom_process_group(backend="gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                                          rank=0, group_name=name, timeout=timedelta(seconds=60))
        try:
            assert joined.result(timeout=60).json() == {
                "success": True, "message": "Succeeded to initialize custom process group."}
            target = perturbed(model_a, seed=12)
            named = unique_params(target)
            buckets = [(named[:7], None), (named[7:], "flattened_bucket")]
            for i, (bucket, load_format) in enumerate(buckets):
                body = {"names": [n for n, _ in bucket],
                        "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                        "shapes": [list(t.shape) for _, t in bucket], "group_name": name,
                        "weight_version": "dist-1" if i == len(buckets) - 1 else None}
                if load_format:
                    body["load_format"] = load_format
                reply = pool.submit(post, engine_b.url, "/update_weights_from_distributed", body)
                tensors = [flatten_bucket(bucket)[0]] if load_format else [t for _, t in bucket]
                broadcast_bucket(tensors, group)
                assert reply.result(timeout=60).json()["success"]
            after = served(engine_b)
            assert after["output_ids"] == hf_greedy(target, PROMPT, NEW)
            assert after["meta_info"]["weight_version"] == "dist-1"
        finally:
            destroyed = post(engine_b.url, "/destroy_weights_update_group", {"group_name": name})
            dist.destroy_process_group(group)
    assert destroyed.json()["success"]
    again = post(engine_b.url, "/destroy_weights_update_group", {"group_name": name})
    assert again.status_code == 400 and again.json()["message"] == "The group to be destroyed does not exist."


def test_release_and_resume_memory_then_reload(engine_b, model_dir_a, model_a):
    assert get(engine_b.url, "/flush_cache").status_code == 200
    assert post(engine_b.url, "/release_memory_occupation", {}).json() is None
    refused = post(engine_b.url, "/generate", {"input_ids": PROMPT})
    assert refused.status_code == 400 and "released" in refused.json()["error"]["message"]
    assert post(engine_b.url, "/resume_memory_occupation", {"tags": ["weights"]}).json() is None
    post(engine_b.url, "/resume_memory_occupation", {"tags": None})
    reply = post(engine_b.url, "/update_weights_from_disk", {"model_path": model_dir_a, "weight_version": "back"})
    assert reply.json()["success"]
    assert served(engine_b)["output_ids"] == hf_greedy(model_a, PROMPT, NEW)


def test_weights_checker_reports_checksums_under_hf_names(engine_a, model_a):
    from slime.backends.sglang_utils.weight_sync import tensor_checksum

    reply = post(engine_a.url, "/weights_checker", {"action": "checksum"})
    assert reply.status_code == 200 and reply.json()["success"], reply.text
    reported = reply.json()["checksums"]
    expected = {name: tensor_checksum(t) for name, t in model_a.state_dict().items()}
    assert reported == expected and "model.layers.0.self_attn.q_proj.weight" in reported
    assert reported["lm_head.weight"] == reported["model.embed_tokens.weight"]  # tied: one tensor, both names
    assert tensor_checksum(torch.zeros(2)) != tensor_checksum(torch.zeros(2, dtype=torch.float64))
    refused = post(engine_a.url, "/weights_checker", {"action": "snapshot"})
    assert refused.status_code == 400 and "only 'checksum'" in refused.json()["message"]


def test_a_flattened_bucket_of_mixed_dtypes_unpacks_exactly():
    """A bf16 tensor with an odd element count followed by fp32 ones: each must start on its element size."""
    from slime.backends.sglang_utils.weight_sync import unflatten_bucket

    bucket = [("a", torch.randn(3).to(torch.bfloat16)), ("b", torch.randn(2, 3)), ("c", torch.arange(5).to(torch.int8)),
              ("d", torch.randn(4).double())]
    flat, metadata = flatten_bucket(bucket)
    assert [m.start_idx % t.element_size() for m, (_, t) in zip(metadata, bucket)] == [0, 0, 0, 0]
    for (name, tensor), (got_name, got) in zip(bucket, unflatten_bucket(flat, metadata)):
        assert name == got_name and got.dtype == tensor.dtype and torch.equal(got, tensor)
