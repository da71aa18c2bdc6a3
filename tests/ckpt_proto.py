"""An independent reader for tests: the .ckpt schema built with the protobuf library."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def _build() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="mploader_test_checkpoint.proto", syntax="proto2")
    tensor = file.message_type.add(name="TensorProto")
    tensor.field.add(name="dims", number=1, type=3, label=3)  # int64, repeated
    tensor.field.add(name="tensor_type", number=2, type=9, label=1)  # string
    tensor.field.add(name="tensor_content", number=3, type=12, label=1)  # bytes
    map_tensor = file.message_type.add(name="MapTensorProto")
    map_tensor.field.add(name="tensor", number=1, type=11, label=3, type_name=".TensorProto")
    checkpoint = file.message_type.add(name="Checkpoint")
    value = checkpoint.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=9, label=1)
    value.field.add(name="tensor", number=2, type=11, label=1, type_name=".TensorProto")
    value.field.add(name="maptensor", number=3, type=11, label=1, type_name=".MapTensorProto")
    checkpoint.field.add(name="value", number=1, type=11, label=3, type_name=".Checkpoint.Value")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        for name in ("Checkpoint", "TensorProto", "MapTensorProto")
    }


MESSAGES = _build()
Checkpoint = MESSAGES["Checkpoint"]
TensorProto = MESSAGES["TensorProto"]


def parse_checkpoint(data: bytes) -> Any:
    """Parse a whole plain .ckpt (without CRC trailer) as one message, as MindSpore does."""
    message = Checkpoint()
    message.ParseFromString(data)
    return message
