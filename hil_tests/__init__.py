"""hil_tests: the SIMULATED pump plant, its protocol servers, and fault-injection rigs.

Public API by module (kept out of this file so ``import hil_tests.plant`` stays light):
``plant`` (PumpPlant, Fault, FaultKind, DEFAULT_FAULTS, SIGNALS), ``skab`` (read_skab),
``modbus_server`` (PlantServer, PLANT_REGISTER_MAP, agent_modbus_section), ``feed``,
``opcua_server`` (OpcUaFace), ``mqtt_publisher`` (MqttFace), ``rig`` / ``rig_runner``.
"""

from hil_tests.errors import HilError, RigError, RigFailed, SkabFormatError

__all__ = ["HilError", "RigError", "RigFailed", "SkabFormatError"]
