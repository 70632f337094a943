"""One eval over several processes: `torchrun --nproc_per_node N -m vist2 eval ...` (or `accelerate launch`).

Rank 0 loads the samples and owns --out (lock, run.json, predictions.jsonl as it goes, the
results); every rank gets them with the records of a run being resumed, and generates the
samples i with i % N == rank in every mode. At the end all records come to rank 0, which
appends the other ranks' to predictions.jsonl and summarizes them in the order of a
one-process run, so results.json has the same rows. Without a launcher (WORLD_SIZE unset)
every function here is the one-process identity. The processes talk through accelerate
(gloo on CPUs, NCCL on GPUs), each on its own GPU (`cuda` becomes `cuda:LOCAL_RANK`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from vist2.errors import Vist2Error
from vist2.eval import run_folder


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def processes() -> tuple[int, int]:
    """(rank, number of processes): (0, 1) without a launcher."""
    if not launched():
        return 0, 1
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu: plain torchrun on CPUs is then gloo
    return state.process_index, state.num_processes


def device(name: str) -> str:
    """This process's device: `cuda` is `cuda:LOCAL_RANK` under a launcher."""
    if launched() and name == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return name


def share(make: Callable[[], object]):
    """`make()` run on rank 0 and its value sent to every rank; a Vist2Error there is raised everywhere."""
    if not launched():
        return make()
    from accelerate.utils import broadcast_object_list

    rank, _ = processes()
    message = [None, None]
    if rank == 0:
        try:
            message = [make(), None]
        except Vist2Error as error:
            message = [None, str(error)]
        except BaseException:
            broadcast_object_list([None, "rank 0 failed; see its error"])
            raise
    value, error = broadcast_object_list(message)
    if error is not None:
        raise Vist2Error(error)
    return value


def mine(samples: list) -> list:
    """This rank's share of the samples: every N-th from its rank on."""
    rank, count = processes()
    return samples[rank::count]


def in_order(records: list[dict], samples: list, modes: list[str]) -> list[dict]:
    """The records as a one-process run returns them: mode by mode, in sample order."""
    found = {run_folder.key(record): record for record in records}
    return [found[(s.task, s.length, s.id, mode)] for mode in modes for s in samples]


def merge(records: list[dict], samples: list, modes: list[str], done: dict, sink) -> list[dict]:
    """Every rank's records on rank 0 in one-process order, the other ranks' new ones appended to
    `sink` (rank 0's predictions.jsonl); [] on the other ranks."""
    if not launched():
        return records
    from accelerate.utils import gather_object

    rank, _ = processes()
    everything = gather_object([[record for record in records]])  # one list per rank
    if rank != 0:
        return []
    own = {run_folder.key(record) for record in everything[0]}
    for records_of_rank in everything[1:]:
        for record in records_of_rank:
            key = run_folder.key(record)
            if key not in done and key not in own:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    sink.flush()
    return in_order([record for records_of_rank in everything for record in records_of_rank], samples, modes)


def finish() -> None:
    if launched():
        from accelerate import PartialState

        PartialState().destroy_process_group()
