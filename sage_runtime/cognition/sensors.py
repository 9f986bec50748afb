"""Per-sensor tracking for fusion and sensor trust: each fusable sensor's newest features, its
observed period, and whether it is stale; fuses them into the tick's context vector."""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from sage_runtime.cognition.attention import Features, Sensor, SensorFusion
from sage_runtime.cognition.trust import TrustLedger
from sage_runtime.mailbox import Channel, Lease
from sage_runtime.records import Frame

log = logging.getLogger("sage.cognition")

FUSABLE = ("image", "vector", "text")


@dataclass
class SensorTrack:
    modality: str
    expected_period_s: float | None
    last_seen: float
    period_ema: float | None = None
    received: int = 0
    data: Features | None = None


class SensorTracks:
    def __init__(self, fusion: SensorFusion, trust: TrustLedger, channel: Channel, stale_periods: float) -> None:
        self.fusion = fusion
        self.trust = trust
        self.channel = channel
        self.stale_periods = stale_periods
        self.tracks: dict[str, SensorTrack] = {}
        self.weights: dict[str, float] = {}
        self.errors = collections.Counter[str]()

    def track(self, frames: Mapping[str, list[Frame]], sensors: Mapping[str, tuple[str, float | None]],
                       snarc: Mapping[str, Mapping[str, float]], now: float) -> None:
        """Keep each fusable sensor's newest input as fusion features (featurised once per frame;
        the frame's mailbox slot is only leased for this tick) and feed sensor trust: freshness
        against its expected period, agreement = 1 - conflict."""
        for sensor, got in frames.items():
            modality, hz = sensors.get(sensor, ("other", None))
            if modality not in FUSABLE:
                continue
            try:
                features = self.fusion.features(modality, got[-1].data)
            except ValueError as exc:  # e.g. a sensor declared `image` sending a vector
                self.errors[sensor] += 1
                log.debug("sensor %s not fused: %s", sensor, exc)
                continue
            track = self.tracks.get(sensor)
            if track is None:
                track = self.tracks[sensor] = SensorTrack(modality, 1.0 / hz if hz else None, now)
            else:
                gap = now - track.last_seen
                track.period_ema = gap if track.period_ema is None else 0.9 * track.period_ema + 0.1 * gap
                track.last_seen = now
            track.received += len(got)
            track.data = features
        for sensor, track in self.tracks.items():
            period = track.expected_period_s or track.period_ema or 1.0
            conflict = snarc.get(sensor, {}).get("conflict", 0.0)
            self.trust.record_sensor(sensor, now, now - track.last_seen, period, agreement=1.0 - conflict,
                                     received=track.received)
            track.received = 0

    def _stale(self, track: SensorTrack, now: float) -> bool:
        period = track.expected_period_s or track.period_ema or 1.0
        return now - track.last_seen > self.stale_periods * period

    def fuse(self, goal: str, snarc: Mapping[str, Mapping[str, float]], now: float
             ) -> tuple[torch.Tensor | None, list[Lease]]:
        """Fuse the newest features of every tracked sensor; the fused vector goes into the
        mailbox channel (returned with its lease, released after the tick)."""
        if not self.tracks:
            return None, []
        names = list(self.tracks)
        inputs = [Sensor(t.modality, t.data, self.trust.sensor(n), snarc.get(n, {}).get("total", 0.0),
                         self._stale(t, now)) for n, t in ((n, self.tracks[n]) for n in names)]
        with torch.inference_mode():
            fused, weights = self.fusion(goal, inputs)
        self.weights = dict(zip(names, (round(w, 4) for w in weights.tolist())))
        written = self.channel.write(fused)
        lease = self.channel.read_latest() if written.published else None
        return (lease.tensor, [lease]) if lease is not None else (fused.clone(), [])

