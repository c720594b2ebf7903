"""Trainer -> GenerationWorker weight sync: one interface (`make_sender(...).send(...)`), several
transports (shm and shm_inplace on CPU, gloo across nodes, nccl and cuda_ipc on GPUs), named in
`registry.TRANSPORTS` and checked against a config by `check_transport`."""

from actors.weight_sync.base import SyncStats, WeightSender, WeightSyncError
from actors.weight_sync.registry import TRANSPORTS, check_transport, make_sender, sender_options

__all__ = ["TRANSPORTS", "SyncStats", "WeightSender", "WeightSyncError", "check_transport", "make_sender",
           "sender_options"]
