"""Fully sharded data parallel training for mmllm's models: `trainer.strategy: mmllm.train.fsdp.BlockFSDP`.

Lightning's FSDPStrategy with mmllm's defaults: every decoder and vision block is its own FSDP unit (each one's
parameters are gathered just before it runs and freed after, so a rank holds one block whole at a time instead
of the model), optionally with activation checkpointing of the same blocks, and full (consolidated) checkpoints
that load into a DDP or single-device run and into `mmllm export`. Lightning refuses its own FSDPStrategy on CPUs;
this one runs there too (gloo), which is how the tests compare it step for step with DDP.

Muon orthogonalises whole weight matrices, and FSDP hands the optimiser flat shards of them: use AdamW with it
(the module refuses the pair by name).
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from mmllm.model.lm import DecoderLayer
from mmllm.model.vision import VisionLayer

BLOCKS = {DecoderLayer, VisionLayer}
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def is_sharded(strategy) -> bool:
    """Whether a Lightning strategy shards parameters (FSDP: Lightning's, ours, or one made from them)."""
    return isinstance(strategy, FSDPStrategy)


def unwrapped_name(name: str) -> str:
    """A parameter's name as built, without the segments FSDP and activation checkpointing insert."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class BlockFSDP(FSDPStrategy):
    """FSDP with mmllm's blocks as the wrapping (and checkpointing) units.

    sharding_strategy: FULL_SHARD (parameters, gradients and optimiser state sharded), SHARD_GRAD_OP (parameters
    kept whole between forward and backward), NO_SHARD (DDP-like), or HYBRID_SHARD (full within a node, replicated
    across nodes). activation_checkpointing: recompute each block's activations in the backward pass instead of
    keeping them (less memory, ~30% more compute).
    """

    def __init__(self, sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
                 activation_checkpointing: bool = False, state_dict_type: Literal["full", "sharded"] = "full",
                 **kwargs: Any) -> None:
        super().__init__(sharding_strategy=sharding_strategy, auto_wrap_policy=set(BLOCKS),
                         activation_checkpointing_policy=set(BLOCKS) if activation_checkpointing else None,
                         state_dict_type=state_dict_type, **kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        # Lightning passes device_id=root_device.index (None on a CPU), and torch's FSDP then looks for an
        # accelerator; naming the CPU device is what it needs to shard over gloo.
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                           **self.kwargs)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def optimizer_state(self, optimizer):
        """The whole optimizer state on rank 0, in Lightning's format. On CPUs it is gathered without FSDP's
        offload_to_cpu, which there returns Adam's first moment holding the second moment's values (torch 2.14,
        gloo; a two-layer model reproduces it), so that a resumed run would continue from wrong moments."""
        if self._state_dict_type != "full" or self.root_device.type != "cpu":
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, OptimStateKeyType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import StateDictType

        inner = getattr(optimizer, "_optimizer", optimizer)
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                  FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            state = FSDP.optim_state_dict(self.model, inner)
        if self.global_rank == 0:
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state
