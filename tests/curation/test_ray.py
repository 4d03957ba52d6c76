"""`executor: ray`: the same stages on Ray Data (local instance, 2 CPUs) give the local executor's results."""

from __future__ import annotations

import pytest

from curation.pipeline import run

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=128 << 20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_matches_local(local_ray, tmp_path, samples, tiny_config):
    local = run(tiny_config(), samples, tmp_path / "local")
    on_ray = run(tiny_config("executor=ray"), samples, tmp_path / "ray")
    assert [r["id"] for r in on_ray.records] == [r["id"] for r in local.records]
    assert [r["status"] for r in on_ray.records] == [r["status"] for r in local.records]
    assert [r["reasons"] for r in on_ray.records] == [r["reasons"] for r in local.records]
    for a, b in zip(on_ray.records, local.records):
        assert a["scores"].keys() == b["scores"].keys()
        for k, v in b["scores"].items():
            assert a["scores"][k] == (v if v is None else pytest.approx(v, rel=1e-4, abs=1e-5)), (a["id"], k)
    assert on_ray.clips_scored == local.clips_scored == 6  # scored in Ray workers, stored by the driver
    accepted = [r for r in on_ray.records if r["status"] == "accepted"]
    assert accepted and all(r["caption"].startswith("sks, ") for r in accepted)
    assert (tmp_path / "ray" / "manifest.parquet").is_file() and (tmp_path / "ray" / "report.html").is_file()
