"""``edgesplit serve --engine ray --replicas N``: more replicas than the CPUs Ray sees is refused at start with a
ConfigError (Ray would queue them and the deployment would never become ready)."""

from __future__ import annotations

import pytest

from edgesplit.errors import ConfigError
from edgesplit.runtime.ray_serve import check_cpus


class FakeRay:
    def __init__(self, cpus: float) -> None:
        self.cpus = cpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, "memory": 1e9}


def test_replicas_that_fit_pass() -> None:
    check_cpus(FakeRay(4.0), 4, 1)
    check_cpus(FakeRay(4.0), 2, 2)


@pytest.mark.parametrize("replicas, threads", [(5, 1), (3, 2)])
def test_replicas_beyond_the_cpus_are_refused(replicas: int, threads: int) -> None:
    with pytest.raises(ConfigError, match=rf"--replicas {replicas} x --threads {threads} reserve "
                                          rf"{replicas * threads} CPUs, but the Ray cluster has 4"):
        check_cpus(FakeRay(4.0), replicas, threads)
