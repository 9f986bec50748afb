"""Jobs of a one-sensor plugin are shared among its sensors by salience (plugin/sensor_share.py):
unit properties of the stride scheduler, then two cameras through a real daemon."""

from __future__ import annotations

import collections

import numpy as np
import torch

from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.sensor_share import FLOOR, SensorShare, split_sensor
from sage_runtime.records import Frame


def test_jobs_follow_the_salience_ratio():
    share, got = SensorShare(), collections.Counter()
    for _ in range(700):
        got[share.pick(["a", "b"], {"a": 0.6, "b": 0.1})] += 1
    assert abs(got["a"] / got["b"] - (0.6 + FLOOR) / (0.1 + FLOOR)) < 0.2


def test_the_uniform_allocator_s_share_takes_equal_turns_whatever_the_salience():
    share, got = SensorShare(uniform=True), collections.Counter()
    for _ in range(700):
        got[share.pick(["a", "b"], {"a": 0.6, "b": 0.1})] += 1
    assert got["a"] == got["b"] == 350


def test_the_uniform_allocator_config_reaches_the_host_s_sensor_share():
    from sage_runtime.config import SageConfig
    from sage_runtime.plugin.host import job_policy
    from sage_plugins.vision import VisionPlugin

    for allocator, uniform in (("attention", False), ("uniform", True)):
        cfg = SageConfig.model_validate({"attention": {"allocator": allocator}})
        assert job_policy(cfg, VisionPlugin()).sensor_share_uniform is uniform


def test_a_sensor_of_zero_salience_is_served_at_the_floor_rate_not_starved():
    share, got = SensorShare(), collections.Counter()
    for _ in range(2100):
        got[share.pick(["busy", "still"], {"busy": 1.0, "still": 0.0})] += 1
    assert abs(got["still"] - 2100 * FLOOR / (1 + 2 * FLOOR)) <= 1


def test_a_sensor_back_from_absence_gets_no_catch_up_burst():
    share = SensorShare()
    for _ in range(50):
        share.pick(["a", "b"], {"a": 0.5, "b": 0.5})
    for _ in range(100):  # b is away
        share.pick(["a"], {"a": 0.5})
    back = [share.pick(["a", "b"], {"a": 0.5, "b": 0.5}) for _ in range(10)]
    assert back.count("b") <= 6  # equal salience: alternation, not ten b's in a row


def test_split_keeps_the_other_sensors_frames_and_backlogs_for_later():
    frames = {s: Frame(s, 1, 0, "tensor", torch.zeros(2), {}) for s in ("a", "b")}
    backlog = {"b": [Frame("b", 0, 0, "tensor", torch.zeros(2), {}), frames["b"]]}
    job, rest = split_sensor(PluginInputs(frames=frames, backlog=backlog, salience={"a": 0.2, "b": 0.9}), "b")
    assert list(job.frames) == ["b"] and list(job.backlog) == ["b"] and job.salience["a"] == 0.2
    assert rest is not None and list(rest.frames) == ["a"] and not rest.backlog
    assert split_sensor(PluginInputs(frames={"a": frames["a"]}), "a")[1] is None


def test_a_static_camera_beside_a_changing_one_is_served_less_but_served(tmp_path):
    """Through the real daemon: a changing camera and a static one (one frame repeated) feed a
    one-sensor plugin that cannot keep up. Before stride sharing the most salient frame won
    every job and the static camera got nothing."""
    from sage_runtime.client import ResultSubscriber, SensorPublisher
    from tests.harness import DaemonProcess, wait_for

    d = DaemonProcess(tmp_path, {"plugins": {"enabled": ["tests.plugins_for_tests:OneCamera"],
                                             "options": {"one_camera": {"step_ms": 8.0}}}}).start()
    pub, sub = SensorPublisher(d.ingest), ResultSubscriber(d.results, topics=("result/one_camera",))
    rng, still = np.random.default_rng(7), np.full((16, 16), 0.5, np.float32)
    served: collections.Counter[str] = collections.Counter()
    try:
        def feed() -> dict:
            for _ in range(4):
                pub.tensor("cam_moving", rng.random((16, 16), dtype=np.float32) * rng.random())
                pub.tensor("cam_still", still)
                while (msg := sub.recv(timeout_s=0.01)) is not None:
                    assert len(msg.outputs["sensors"]) == 1, msg.outputs["sensors"]
                    served[msg.outputs["sensors"][0]] += 1
            return d.status()["plugins"]["one_camera"]["atp_by_sensor"]

        wait_for(lambda: feed().get("cam_still", 0) > 0 and sum(served.values()) >= 30, timeout_s=60, interval_s=0.0)
        atp = feed()
        assert atp["cam_moving"] >= 2 * atp["cam_still"] > 0, atp
        assert served["cam_moving"] > served["cam_still"] > 0, served
    finally:
        pub.close()
        sub.close()
        d.stop()
