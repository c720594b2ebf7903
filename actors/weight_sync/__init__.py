"""Trainer -> GenerationWorker weight sync: one interface (`make_sender(...).send(...)`), several
transports (shm on CPU, nccl and cuda_ipc on GPUs)."""

from actors.weight_sync.base import SyncStats, WeightSender, WeightSyncError, make_sender

__all__ = ["SyncStats", "WeightSender", "WeightSyncError", "make_sender"]
