"""The reference policy of KL losses and penalties, kept as host copies of the actor's parameters.

As slime does, one model serves both: the reference weights live in host memory and are swapped into the live
model for the reference log-prob pass, then the actor's weights are swapped back. A second model on the device would
double the parameter memory of every trainer for a forward-only pass per rollout.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from argparse import Namespace
from typing import Iterator

import torch

from slime.backends.megatron_utils.checkpoint import load_checkpoint
from slime.backends.megatron_utils.hf_weights import unwrap

logger = logging.getLogger(__name__)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().to("cpu", copy=True) for name, param in unwrap(model).named_parameters()}


@torch.no_grad()
def _restore(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for name, param in unwrap(model).named_parameters():
        param.copy_(tensors[name], non_blocking=True)


class ReferenceWeights:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    @classmethod
    def load(cls, args: Namespace, model: torch.nn.Module) -> "ReferenceWeights":
        """The weights of --ref-load (at --ref-ckpt-step). When the actor itself was just initialised from it,
        they are the live weights; otherwise they are loaded into the model and the actor's are put back."""
        if args.load == args.ref_load and args.ckpt_step == args.ref_ckpt_step and args.finetune:
            logger.info("reference model: the initial weights (%s)", args.ref_load)
            return cls(_snapshot(model))
        actor = _snapshot(model)
        ref_args = copy.copy(args)
        ref_args.load, ref_args.ckpt_step = args.ref_load, args.ref_ckpt_step
        ref_args.finetune = ref_args.no_load_optim = ref_args.no_load_rng = True
        load_checkpoint(ref_args, model, None, None)
        reference = cls(_snapshot(model))
        _restore(model, actor)
        logger.info("reference model: %s, kept in host memory", args.ref_load)
        return reference

    def refresh_from(self, model: torch.nn.Module) -> None:
        """--ref-update-interval: the reference becomes the current actor."""
        self.tensors = _snapshot(model)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """The model computes with the reference weights inside the block; the actor's weights (bit for bit) after."""
        actor = _snapshot(model)
        _restore(model, self.tensors)
        try:
            yield
        finally:
            _restore(model, actor)
