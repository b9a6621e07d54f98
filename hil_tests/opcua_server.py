"""Serves the SIMULATED plant over OPC UA (asyncua server on loopback), values updated live.

Each signal is a Double variable with the string NodeId ``ns=<idx>;s=<signal>`` under the
object ``Pump`` in namespace ``PLANT_NAMESPACE``; every feed tick writes all of them at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds

from attestation.localports import free_port
from hil_tests.errors import HilError
from hil_tests.feed import PlantFeed, PlantSample
from hil_tests.plant import SIGNALS
from hil_tests.tasks import stop_all

__all__ = ["PLANT_NAMESPACE", "OpcUaFace"]

log = logging.getLogger(__name__)
PLANT_NAMESPACE = "urn:factoryops:sim:pump"
_PATH = "/factoryops/plant/"


@dataclass
class OpcUaFace:
    """``async with OpcUaFace(feed, port=0) as ua_srv:`` serves ``ua_srv.url``.

    ``nodeids`` maps each signal to its NodeId string, for a client config or a test.
    ``written_step`` is the feed step last written; ``wait_written(step)`` waits for it.
    """

    feed: PlantFeed
    host: str = "127.0.0.1"
    port: int = 0
    nodeids: dict[str, str] = field(default_factory=dict)
    written_step: int = 0
    _written: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)
    _server: Server | None = field(default=None, repr=False)
    _nodes: dict[str, ua.NodeId] = field(default_factory=dict, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{_PATH}"

    def describe(self) -> str:
        some = self.nodeids.get("Pressure", "")
        return f"OPC UA      {self.url}  Double variables, e.g. {some}"

    async def __aenter__(self) -> OpcUaFace:
        if self._server is not None:
            raise HilError("the OPC UA server is already running")
        if self.port == 0:
            # the endpoint URL the server advertises must carry the real port
            self.port = free_port(self.host)
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("FactoryOps simulated pump plant (not real equipment)")
        # loopback test peer: no security; the agent's secure-channel tests bring certificates
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(PLANT_NAMESPACE)
        pump = await server.nodes.objects.add_object(f"ns={idx};s=Pump", "Pump")
        for name, unit in SIGNALS.items():
            var = await pump.add_variable(
                f"ns={idx};s={name}", name, 0.0, varianttype=ua.VariantType.Double
            )
            await var.write_attribute(
                AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(f"{name} [{unit}]"))),
            )
            self._nodes[name] = var.nodeid
            self.nodeids[name] = var.nodeid.to_string()
        try:
            await server.start()
        except OSError as err:
            raise HilError(
                f"cannot listen for OPC UA on {self.host}:{self.port}: {err.strerror}",
                hint="pick another --opcua-port, or 0 for any free port",
            ) from err
        self._server = server
        await self._write(server, self.feed.sample)
        self._task = asyncio.create_task(self._follow(server), name=f"opcua-face:{self.port}")
        log.info("OPC UA server on %s", self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            await stop_all([self._task])
            self._task = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def _follow(self, server: Server) -> None:
        async for sample in self.feed.updates():
            await self._write(server, sample)

    async def _write(self, server: Server, sample: PlantSample) -> None:
        # the same source timestamp on every variable: one sample, one instant
        stamp = ua.DateTime.now(dt.UTC)
        for name, nodeid in self._nodes.items():
            dv = ua.DataValue(
                ua.Variant(float(sample.values[name]), ua.VariantType.Double),
                SourceTimestamp=stamp,
            )
            await server.write_attribute_value(nodeid, dv)
        async with self._written:
            self.written_step = sample.step
            self._written.notify_all()

    async def wait_written(self, step: int) -> None:
        """Return once feed step ``step`` (or a later one) is readable over OPC UA."""
        async with self._written:
            await self._written.wait_for(lambda: self.written_step >= step)
