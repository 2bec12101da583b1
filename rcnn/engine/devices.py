"""Devices and processes: one place for ``--device`` and ``torchrun`` handling.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins the group (NCCL on GPUs,
gloo on CPU) and takes the GPU ``LOCAL_RANK``; alone, it runs on ``--device``.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from detectron_parity.errors import UserError


class DeviceError(UserError, ValueError):
    """The requested device does not exist here."""


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when available unless asked otherwise; a clear error for an absent GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def init_processes(device_name: str | None) -> torch.device:
    """This process's device, after joining the process group when run by ``torchrun``."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return resolve_device(device_name)
    use_cuda = torch.cuda.is_available() and (device_name is None or device_name.startswith("cuda"))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_processes() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
