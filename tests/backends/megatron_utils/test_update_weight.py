"""Weight sync from an in-process trainer to real CPU engine processes, by each transport: after a training step the
engines' log-probs of a fixed sequence equal the trainer's (fp32, 1e-4) and they report the new weight version;
--check-weight-update-equal catches a corrupted engine tensor; an unreachable engine is a one-line error naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from engine_helpers import get, post
from megatron_helpers import random_samples, shards_for
from slime.backends.megatron_utils.actor import MegatronTrainRayActor
from slime.backends.megatron_utils.hf_weights import iter_hf_tensors
from slime.backends.megatron_utils.update_weight import WeightSyncError, build_weight_updater
from slime.backends.sglang_utils.cpu_engine.launcher import launch_cpu_engine
from slime.utils.arguments import parse_args
from slime.utils.misc import free_port

pytestmark = pytest.mark.usefixtures("megatron_world")

# Token ids inside the tiny model's vocabulary (SmolLM2's 49,152), the same for every comparison.
SEQUENCE = [510, 3011, 4, 77, 1200, 9, 4242, 31, 318, 2048, 7, 15000, 260, 88, 5, 1024]
TRANSPORTS = {
    "distributed": lambda tmp: [],
    "tensor": lambda tmp: ["--colocate"],
    "disk": lambda tmp: ["--update-weight-transport", "disk", "--update-weight-disk-dir", str(tmp / "sync")],
}


def trainer_flags(model_dir: str, *extra: str) -> list[str]:
    return ["--hf-checkpoint", model_dir, "--load", model_dir, "--rollout-batch-size", "4", "--global-batch-size", "4",
            "--num-rollout", "2", "--loss-type", "sft_loss", "--disable-compute-advantages-and-returns",
            "--debug-train-only", "--actor-num-gpus-per-node", "1", "--optimizer", "sgd", "--lr", "0.5",
            "--lr-decay-style", "constant", "--attention-dropout", "0", "--hidden-dropout", "0",
            "--data-pad-size-multiplier", "8", *extra]


def trained_actor(model_dir: str, seed: int, *extra: str) -> MegatronTrainRayActor:
    """The engines' starting checkpoint, after one SGD step: weights they do not hold yet."""
    actor = MegatronTrainRayActor()
    actor.init(parse_args(trainer_flags(model_dir, *extra)))
    actor.train(0, shards_for(actor.args, random_samples(4, seed=seed))[0])
    return actor


@torch.no_grad()
def trainer_log_probs(actor: MegatronTrainRayActor) -> torch.Tensor:
    """log p(token i | tokens before it) for i >= 1, from the trainer's own forward."""
    n = len(SEQUENCE)
    cu = torch.tensor([0, n], dtype=torch.int32)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=n, max_seqlen_kv=n)
    actor.model.eval()
    logits = actor.model(input_ids=torch.tensor([SEQUENCE]), position_ids=None, attention_mask=None,
                         packed_seq_params=packed)[0][:, : actor.args.vocab_size]
    actor.model.train()
    log_probs = torch.log_softmax(logits.float(), dim=-1)[:-1]
    return log_probs.gather(1, torch.tensor(SEQUENCE[1:])[:, None])[:, 0]


def engine_log_probs(url: str) -> torch.Tensor:
    reply = post(url, "/generate", {"input_ids": SEQUENCE, "return_logprob": True, "logprob_start_len": 0,
                                    "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    assert reply.status_code == 200, reply.text
    entries = reply.json()["meta_info"]["input_token_logprobs"]
    assert [token for _, token, _ in entries] == SEQUENCE and entries[0][0] is None
    return torch.tensor([value for value, _, _ in entries[1:]])


@pytest.fixture(scope="module")
def engines(model_dir_a, tmp_path_factory):
    """Two CPU engines serving checkpoint A, the trainers' starting point; each test pushes all weights."""
    started = []
    try:
        for index in range(2):
            log = tmp_path_factory.mktemp(f"sync_engine_{index}") / "engine.log"
            started.append(launch_cpu_engine(model_dir_a, free_port(), timeout=180, log_path=str(log),
                                             extra_args=["--random-seed", "0", "--skip-server-warmup"],
                                             env={"OMP_NUM_THREADS": "1"}))
        yield started
    finally:
        for engine in started:
            engine.stop()


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_engines_serve_the_trained_weights_after_a_sync(transport, engines, model_dir_a, tmp_path):
    seed = list(TRANSPORTS).index(transport)  # weights no earlier test has pushed
    actor = trained_actor(model_dir_a, seed, *TRANSPORTS[transport](tmp_path), "--check-weight-update-equal",
                          "--update-weight-buffer-size", str(200_000))  # several buckets for this model
    urls = [engine.url for engine in engines]
    expected = trainer_log_probs(actor)
    for url in urls:
        assert (engine_log_probs(url) - expected).abs().max() > 1e-3  # the test can fail: they differ before
    updater = build_weight_updater(actor.args, actor.model, urls)
    try:
        metrics = updater.update(7 + seed)
    finally:
        updater.close()
    for url in urls:
        assert (engine_log_probs(url) - expected).abs().max() < 1e-4
        assert get(url, "/get_weight_version").json() == {"weight_version": str(7 + seed)}
        assert get(url, "/server_info").json()["internal_states"][0]["paused"] is False
    assert metrics["perf/update_weights_time"] > 0
    hf_bytes = sum(t.numel() * t.element_size() for n, t in iter_hf_tensors(actor.model, actor.args)
                   if n != "lm_head.weight")  # tied to the embedding: sent once
    # The disk transport counts the safetensors files, a few header bytes more than the tensors.
    assert hf_bytes <= metrics["perf/update_weights_bytes"] < hf_bytes + 100_000
    if transport == "disk":
        assert sorted(os.listdir(tmp_path / "sync")) == [f"weight_v{7 + seed:06d}"]


def test_check_weight_update_equal_names_a_corrupted_tensor(engines, model_dir_a):
    actor = trained_actor(model_dir_a, 5, "--colocate")
    updater = build_weight_updater(actor.args, actor.model, [engines[0].url])
    updater.update(20)
    updater.verify()  # a correct sync passes
    from slime.backends.sglang_utils.weight_sync import serialize_bucket

    name = "model.layers.1.mlp.down_proj.weight"
    weight = dict(iter_hf_tensors(actor.model, actor.args))[name]
    payload, keep_alive = serialize_bucket([(name, weight + 1e-3)])
    corrupt = post(engines[0].url, "/update_weights_from_tensor",
                   {"serialized_named_tensors": [payload], "load_format": "flattened_bucket"})
    assert corrupt.json()["success"], corrupt.text
    del keep_alive
    with pytest.raises(WeightSyncError, match=f"engine {engines[0].url} holds a different {name} than the trainer"):
        updater.verify()


def test_an_unreachable_engine_is_a_one_line_error_naming_it(engines, model_dir_a, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    for extra in ([], ["--colocate"], TRANSPORTS["disk"](tmp_path)):
        actor = trained_actor(model_dir_a, 6, *extra)
        updater = build_weight_updater(actor.args, actor.model, [engines[1].url, dead])
        with pytest.raises(WeightSyncError) as error:
            updater.update(30)
        message = str(error.value)
        assert dead in message and "unreachable" in message and "\n" not in message
        assert get(engines[1].url, "/get_weight_version").json()["weight_version"] != "30"
        post(engines[1].url, "/continue_generation")  # a failed sync leaves the engines it paused paused


def test_an_engine_lost_after_joining_the_group_stops_the_sync(engines, model_dir_a, tmp_path):
    """Distributed: the group is formed with two engines, one dies, the next sync fails naming it; the survivor
    stays paused on its old version, so nothing is served until a sync completes."""
    doomed = launch_cpu_engine(engines[0].model_path, free_port(), timeout=180, log_path=str(tmp_path / "doomed.log"),
                               extra_args=["--random-seed", "0", "--skip-server-warmup"], env={"OMP_NUM_THREADS": "1"})
    actor = trained_actor(model_dir_a, 8)
    updater = build_weight_updater(actor.args, actor.model, [engines[1].url, doomed.url])
    try:
        updater.update(50)
        doomed.stop()
        actor.train(1, shards_for(actor.args, random_samples(4, seed=9))[0])
        with pytest.raises(WeightSyncError, match=f"engine {doomed.url} is unreachable"):
            updater.update(51)
        state = get(engines[1].url, "/server_info").json()
        assert state["internal_states"][0]["paused"] is True and state["weight_version"] == "50"
    finally:
        doomed.stop()
        updater.close()
        post(engines[1].url, "/continue_generation")


def test_disk_transport_needs_a_directory(model_dir_a):
    args = parse_args(trainer_flags(model_dir_a, "--update-weight-transport", "disk"))
    with pytest.raises(ValueError, match="--update-weight-disk-dir"):
        build_weight_updater(args, None, ["http://127.0.0.1:1"])


@pytest.mark.slow
def test_tensor_parallel_trainer_syncs_gathered_weights(engines, model_dir_a, tmp_path):
    """TP=2 in two real processes: the TP gather feeds the broadcast, the worker's --check-weight-update-equal
    compares every tensor the engine holds with the gathered ones, and the engine's log-probs are those of
    the gathered weights."""
    worker = Path(__file__).with_name("update_weight_worker.py")
    out, port = tmp_path / "weights.pt", free_port()
    command = [sys.executable, str(worker), "--world-size", "2", "--port", str(port), "--engine", engines[0].url,
               "--out", str(out), "--", *trainer_flags(model_dir_a, "--tensor-model-parallel-size", "2",
                                                         "--actor-num-gpus-per-node", "2",
                                                         "--check-weight-update-equal")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([*command[:2], "--rank", str(rank), *command[2:]], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in processes]
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-3000:]
    import transformers

    weights = torch.load(out)
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir_a, dtype=torch.float32).eval()
    reference.load_state_dict(weights, strict=False)
    with torch.no_grad():
        logits = reference(torch.tensor([SEQUENCE])).logits[0]
    expected = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(SEQUENCE[1:])[:, None])[:, 0]
    assert (engine_log_probs(engines[0].url) - expected).abs().max() < 1e-4
    assert get(engines[0].url, "/get_weight_version").json() == {"weight_version": "41"}
