"""SGLang's HTTP API (the subset slime uses, with SGLang's request and reply JSON) in front of the CPU engine.

A faithful stand-in for `sglang.launch_server` on machines without GPUs: the rollout code, the router and the
engine actor talk to it exactly as to SGLang. Endpoints: /generate, /health, /health_generate, /model_info,
/server_info, /v1/loads, /flush_cache, /abort_request, /pause_generation, /continue_generation, the weight
endpoints (/update_weights_from_disk, /update_weights_from_tensor, /init_weights_update_group,
/update_weights_from_distributed, /destroy_weights_update_group, /get_weight_version), /weights_checker (only its
"checksum" action, for --check-weight-update-equal), and /release_memory_occupation, /resume_memory_occupation.
Error bodies follow SGLang: a bad /generate gives 400 `{"error": {"message": ...}}`, a control call missing a field
gives 400 `{"object": "error", ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from typing import Any, AsyncIterator

import orjson
import torch
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import Response, StreamingResponse

from slime.backends.sglang_utils.cpu_engine.engine import Engine
from slime.backends.sglang_utils.cpu_engine.weights import load_named_tensors, read_checkpoint
from slime.backends.sglang_utils.weight_sync import (
    broadcast_bucket, deserialize_bucket, init_custom_process_group, tensor_checksum)

SGLANG_API_VERSION = "0.5.15.post1"  # the SGLang release whose HTTP API this server reproduces
FLUSH_OK = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting "
            "requests, the operation will not be performed.)\n")
# /generate keys the CPU engine cannot honour: refused when set, rather than silently ignored.
UNSUPPORTED_GENERATE_KEYS = ("input_embeds", "image_data", "video_data", "audio_data", "lora_path",
                             "session_params", "token_ids_logprob", "custom_logit_processor", "return_hidden_states",
                             "return_routed_experts", "return_entropy", "return_sampling_mask")
PER_ITEM_KEYS = ("sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num")


class BadRequest(Exception):
    """A control request SGLang would reject at validation (400, OpenAI-style error body)."""


def json_response(content: Any, status_code: int = 200) -> Response:
    # orjson writes NaN/inf as null where the stdlib would emit invalid JSON.
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def generate_error(message: str, status_code: int = 400) -> Response:
    return json_response({"error": {"message": message}}, status_code)


def bad_request(message: str) -> Response:
    return json_response({"object": "error", "message": message, "type": "Bad Request", "param": None,
                          "code": 400}, 400)


async def read_body(request: HttpRequest) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, default: Any = ..., kind: type | tuple[type, ...] | None = None) -> Any:
    if name not in body or body[name] is None:
        if default is ...:
            raise BadRequest(f"Field required: {name}")
        return default
    if kind is not None and not isinstance(body[name], kind):
        raise BadRequest(f"Field {name} has the wrong type: {body[name]!r}")
    return body[name]


def split_generate_body(body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """SGLang's batch normalisation: a list of input_ids lists (or of texts) is a batch; per-item fields are
    either one value for all or a list; a string rid becomes the prefix of per-item rids."""
    for key in UNSUPPORTED_GENERATE_KEYS:
        if body.get(key):
            raise ValueError(f"not supported yet by the CPU engine: {key}")
    ids, text = body.get("input_ids"), body.get("text")
    if ids is not None and text is not None:
        raise ValueError("Either text or input_ids should be provided, not both.")
    batch = (isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)) or isinstance(text, list)
    if not batch:
        return [{**body, "rid": body.get("rid") or uuid.uuid4().hex}], False
    if body.get("stream"):
        raise ValueError("not supported yet by the CPU engine: stream with a batch of inputs")
    inputs = ids if ids is not None else text
    n = len(inputs)
    rid = body.get("rid")
    if isinstance(rid, list) and len(rid) != n:
        raise ValueError(f"rid has {len(rid)} entries for a batch of {n}.")
    items = []
    for i in range(n):
        item = {"input_ids" if ids is not None else "text": inputs[i],
                "return_text_in_logprobs": body.get("return_text_in_logprobs")}
        for key in PER_ITEM_KEYS:
            value = body.get(key)
            if isinstance(value, list):
                if len(value) != n:
                    raise ValueError(f"{key} has {len(value)} entries for a batch of {n}.")
                value = value[i]
            item[key] = value
        item["rid"] = rid[i] if isinstance(rid, list) else (f"{rid}_{i}" if rid else uuid.uuid4().hex)
        items.append(item)
    return items, True


def server_info(engine: Engine) -> dict[str, Any]:
    running, waiting = engine.scheduler.counts()
    return {**engine.args.as_dict(), "model_path": engine.model_path, "tp_size": 1, "dp_size": 1, "pp_size": 1,
            "ep_size": 1, "moe_dp_size": 1, "nnodes": 1, "node_rank": 0, "num_gpus": 0, "device": "cpu",
            "dtype": "float32", "disaggregation_mode": "null", "encoder_only": False,
            "weight_version": engine.weight_version, "status": "ready" if engine.healthy else "starting",
            "max_total_num_tokens": engine.max_total_tokens, "max_req_input_len": engine.context_len - 1,
            "context_length": engine.context_len, "internal_states": [engine.engine_state()],
            "version": SGLANG_API_VERSION, "backend": "slime CPU engine (transformers)", "kv_events": None,
            "num_running_reqs": running, "num_waiting_reqs": waiting}


def loads(engine: Engine) -> dict[str, Any]:
    sched = engine.scheduler
    running, waiting = sched.counts()
    used = sched.batch.used_slots()
    total = engine.max_total_tokens
    return {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": SGLANG_API_VERSION,
            "loads": [{"dp_rank": 0, "num_running_reqs": running, "num_waiting_reqs": waiting,
                       "num_waiting_uncached_tokens": sum(len(r.context_ids()) for r in list(sched.waiting)),
                       "num_used_tokens": used, "num_total_tokens": total, "max_total_num_tokens": total,
                       "max_running_requests": engine.args.max_running_requests,
                       "token_usage": used / total if total else 0.0, "gen_throughput": sched.gen_throughput(),
                       "cache_hit_rate": 0.0,
                       "utilization": running / engine.args.max_running_requests}]}


def weight_reply(success: bool, message: str, version: str | None, **extra: Any) -> Response:
    if success and version is not None:
        message += f" Weight version updated to {version}."
    return json_response({"success": success, "message": message, **extra}, 200 if success else 400)


def create_app(engine: Engine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.startup()
        yield
        await engine.shutdown()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: HttpRequest, exc: BadRequest) -> Response:
        return bad_request(str(exc))

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: HttpRequest) -> Response:
        if engine.scheduler.error is not None:
            return generate_error(f"the engine failed: {engine.scheduler.error}", 500)
        try:
            items, is_batch = split_generate_body(await read_body(request))
            reqs = [engine.make_request(item) for item in items]
        except (ValueError, TypeError, BadRequest) as exc:
            return generate_error(str(exc))
        if reqs[0].stream:
            return StreamingResponse(stream(reqs, request), media_type="text/event-stream")
        try:
            replies = await engine.generate(reqs, disconnected=request.is_disconnected)
        except ValueError as exc:
            return generate_error(str(exc))
        except RuntimeError as exc:
            return generate_error(str(exc), 500)
        if engine.scheduler.error is not None:  # SGLang answers requests killed by a server error with a 500
            return generate_error(f"the engine failed: {engine.scheduler.error}", 500)
        return json_response(replies if is_batch else replies[0])

    async def stream(reqs: list, request: HttpRequest) -> AsyncIterator[bytes]:
        chunks: asyncio.Queue = asyncio.Queue()

        async def on_progress(reply: dict[str, Any]) -> None:
            await chunks.put(reply)

        task = asyncio.create_task(engine.generate(reqs, on_progress=on_progress,
                                                   disconnected=request.is_disconnected))
        try:
            while not (task.done() and chunks.empty()):
                getter = asyncio.ensure_future(chunks.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield b"data: " + orjson.dumps(getter.result()) + b"\n\n"
                else:
                    getter.cancel()
            if task.exception() is not None:
                error = {"message": str(task.exception()), "type": "invalid_request_error", "code": 400}
                yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if not task.done():
                task.cancel()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if engine.healthy else 503)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        return Response(status_code=200 if await engine.health_generate() else 503)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> Response:
        return json_response(engine.model_info())

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def get_server_info() -> Response:
        return json_response(server_info(engine))

    @app.get("/v1/loads")
    async def v1_loads() -> Response:
        return json_response(loads(engine))

    @app.api_route("/get_weight_version", methods=["GET", "POST"])
    @app.api_route("/weight_version", methods=["GET", "POST"])
    async def weight_version() -> Response:
        return json_response({"weight_version": engine.weight_version})

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache(timeout: float = 0.0) -> Response:
        # There is no prefix cache to reset: every prompt is prefilled. What SGLang checks is kept: a flush only
        # succeeds on an idle engine, which is what slime's flush loop waits for before a weight update.
        deadline = asyncio.get_running_loop().time() + timeout
        while not engine.scheduler.is_idle():
            if asyncio.get_running_loop().time() >= deadline:
                text = "Timed out waiting for idle state.\n" if timeout > 0 else "Flush cache failed.\n"
                return Response(text, status_code=400, media_type="text/plain")
            await asyncio.sleep(0.02)
        return Response(FLUSH_OK, media_type="text/plain")

    @app.post("/abort_request")
    async def abort_request(request: HttpRequest) -> Response:
        body = await read_body(request)
        engine.scheduler.abort(rid=field(body, "rid", "", str), abort_all=bool(field(body, "abort_all", False)))
        return Response(status_code=200)

    @app.post("/pause_generation")
    async def pause_generation(request: HttpRequest) -> Response:
        body = await read_body(request)
        try:
            await engine.pause(field(body, "mode", "abort", str))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return json_response({"message": "Generation paused successfully.", "status": "ok"})

    @app.post("/continue_generation")
    async def continue_generation() -> Response:
        await engine.resume()
        return json_response({"message": "Generation continued successfully.", "status": "ok"})

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: HttpRequest) -> Response:
        body = await read_body(request)
        path = field(body, "model_path", kind=str)
        version = field(body, "weight_version", None)

        def load() -> None:
            load_named_tensors(engine.model, read_checkpoint(path, field(body, "load_format", None)))
            engine.model_path = path

        try:
            await engine.update_weights(load, version, bool(field(body, "abort_all_requests", False)))
        except (ValueError, OSError) as exc:
            return weight_reply(False, f"Failed to update weights: {exc}.", None, num_paused_requests=0)
        return weight_reply(True, "Succeeded to update model weights.", version, num_paused_requests=0)

    @app.post("/update_weights_from_tensor")
    async def update_weights_from_tensor(request: HttpRequest) -> Response:
        body = await read_body(request)
        serialized = field(body, "serialized_named_tensors", kind=list)
        if len(serialized) != 1:
            raise BadRequest(f"serialized_named_tensors has {len(serialized)} entries; a CPU engine is one TP rank")
        version, load_format = field(body, "weight_version", None), field(body, "load_format", None)
        try:
            named = deserialize_bucket(serialized[0], load_format)
            await engine.update_weights(lambda: load_named_tensors(engine.model, named), version,
                                        bool(field(body, "abort_all_requests", False)))
        except (ValueError, RuntimeError) as exc:
            return weight_reply(False, f"Failed to update weights: {exc}", None)
        return weight_reply(True, "Success", version)

    @app.post("/init_weights_update_group")
    async def init_weights_update_group(request: HttpRequest) -> Response:
        body = await read_body(request)
        address, port = field(body, "master_address", kind=str), field(body, "master_port", kind=int)
        rank_offset, world_size = field(body, "rank_offset", kind=int), field(body, "world_size", kind=int)
        name, backend = field(body, "group_name", "weight_update_group", str), field(body, "backend", "nccl", str)
        fail = "Failed to initialize custom process group: "
        if backend != "gloo":
            return weight_reply(False, fail + f"backend {backend!r} needs GPUs; the CPU engine joins gloo groups", None)
        if name in engine.groups:
            return weight_reply(False, fail + f"a group named {name!r} exists already", None)
        try:
            engine.groups[name] = await asyncio.to_thread(
                init_custom_process_group, backend=backend, init_method=f"tcp://{address}:{port}",
                world_size=world_size, rank=rank_offset, group_name=name)
        except Exception as exc:  # noqa: BLE001 - any rendezvous failure is the caller's to see
            return weight_reply(False, fail + str(exc), None)
        return weight_reply(True, "Succeeded to initialize custom process group.", None)

    @app.post("/update_weights_from_distributed")
    async def update_weights_from_distributed(request: HttpRequest) -> Response:
        body = await read_body(request)
        names, dtypes, shapes = (field(body, key, kind=list) for key in ("names", "dtypes", "shapes"))
        name, version = field(body, "group_name", "weight_update_group", str), field(body, "weight_version", None)
        if name not in engine.groups:
            return weight_reply(False, f"Failed to update parameter online: no weight update group {name!r}.", None)
        if not len(names) == len(dtypes) == len(shapes):
            raise BadRequest("names, dtypes and shapes must have the same length")
        try:
            dtype_objs = [getattr(torch, d) for d in dtypes]
        except AttributeError as exc:
            return weight_reply(False, f"Failed to update parameter online: unknown dtype ({exc}).", None)
        flattened = field(body, "load_format", None) == "flattened_bucket"

        def receive_and_load() -> None:
            tensors = [torch.empty(s, dtype=d) for s, d in zip(shapes, dtype_objs)]
            if flattened:  # one uint8 broadcast holding every tensor's bytes, in list order
                flat = torch.empty(sum(t.numel() * t.element_size() for t in tensors), dtype=torch.uint8)
                broadcast_bucket([flat], engine.groups[name])
                offset = 0
                for t in tensors:
                    size = t.numel() * t.element_size()
                    t.view(-1).view(torch.uint8).copy_(flat[offset:offset + size])
                    offset += size
            else:
                broadcast_bucket(tensors, engine.groups[name])
            load_named_tensors(engine.model, list(zip(names, tensors)))

        try:
            await engine.update_weights(receive_and_load, version, bool(field(body, "abort_all_requests", False)))
        except (ValueError, RuntimeError) as exc:
            return weight_reply(False, f"Failed to update parameter online: {exc}", None)
        return weight_reply(True, "Succeeded to update parameter online.", version)

    @app.post("/destroy_weights_update_group")
    async def destroy_weights_update_group(request: HttpRequest) -> Response:
        body = await read_body(request)
        group = engine.groups.pop(field(body, "group_name", "weight_update_group", str), None)
        if group is None:
            return weight_reply(False, "The group to be destroyed does not exist.", None)
        await asyncio.to_thread(torch.distributed.destroy_process_group, group)
        return weight_reply(True, "Succeeded to destroy custom process group.", None)

    @app.post("/weights_checker")
    async def weights_checker(request: HttpRequest) -> Response:
        # SGLang's endpoint name; of its actions only "checksum" is served, keyed by HF parameter name and hashed
        # with `tensor_checksum`, so that a trainer can compare each tensor it sent (a stand-in extra: SGLang keys
        # its own fused layout and hashes differently).
        action = field(await read_body(request), "action", kind=str)
        if action != "checksum":
            return weight_reply(False, f"not supported yet by the CPU engine: weights_checker action {action!r} "
                                       "(only 'checksum')", None)

        def checksums() -> dict[str, str]:
            return {name: tensor_checksum(t) for name, t in engine.model.state_dict(keep_vars=True).items()}

        values = await asyncio.wrap_future(engine.scheduler.run_control(checksums))
        return weight_reply(True, f"Checksums of {len(values)} tensors.", None, checksums=values)

    @app.api_route("/release_memory_occupation", methods=["GET", "POST"])
    async def release_memory_occupation(request: HttpRequest) -> Response:
        body = await read_body(request)
        if not engine.args.enable_memory_saver:
            return generate_error("release_memory_occupation needs a server started with --enable-memory-saver")
        if not engine.scheduler.is_idle():
            return generate_error("release_memory_occupation needs an idle engine (flush_cache first)")
        await asyncio.wrap_future(engine.scheduler.run_control(lambda: engine.release_memory(body.get("tags"))))
        return json_response(None)

    @app.api_route("/resume_memory_occupation", methods=["GET", "POST"])
    async def resume_memory_occupation(request: HttpRequest) -> Response:
        body = await read_body(request)
        await asyncio.wrap_future(engine.scheduler.run_control(lambda: engine.resume_memory(body.get("tags"))))
        return json_response(None)

    return app
