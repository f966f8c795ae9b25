"""One Ray job of tests/ray_study: join Ray through ray_session, hold a task with the job's share for a while."""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import ray

from workflow.distributed import job_resources, ray_session


def hold(seconds: float, marker: str) -> dict:
    Path(marker).write_text(str(os.getpid()))
    start = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "task_start": start,
            "task_end": time.time()}


def main() -> int:
    output, threads, gpus, seconds, fail, index = sys.argv[1:7]
    threads, gpus = int(threads), int(gpus)
    share = job_resources(threads, gpus)
    with ray_session(num_cpus=threads, num_gpus=gpus):
        task = ray.remote(hold).options(num_cpus=share["CPU"], num_gpus=share.get("GPU", 0))
        info = ray.get(task.remote(float(seconds), f"{output}.running"))
        info["address"] = ray.get_runtime_context().gcs_address
    if int(fail) == int(index):
        print("job.py: failing on purpose", file=sys.stderr)
        return 1
    info["cluster"] = os.environ.get("STRATA_RAY_CLUSTER")
    Path(output).write_text(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
