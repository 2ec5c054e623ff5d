"""TF Serving protos that the tensorflow-serving-api wheel does not ship, declared with TF Serving's package,
field names, numbers and types in a descriptor pool of their own (so they never clash with a library that
registers the real ones):

* ``BatchingParameters`` (tensorflow_serving/servables/tensorflow/session_bundle_config.proto): the
  ``--batching_parameters_file``;
* ``MonitoringConfig`` and ``PrometheusConfig`` (tensorflow_serving/config/monitoring_config.proto): the
  ``--monitoring_config_file``;
* ``SerializedInput`` (tensorflow_serving/apis/internal/serialized_input.proto): the wire-compatible view of
  an ``Input`` whose examples stay serialized bytes, which is how TF Serving turns a Classify or Regress
  request into its ``[batch]`` string tensor without re-serializing each Example.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
from google.protobuf.message_factory import GetMessageClass

_F = descriptor_pb2.FieldDescriptorProto


def _declare(file_proto: descriptor_pb2.FileDescriptorProto, name: str, fields: list[tuple]) -> None:
    """Adds message ``name``; ``fields`` are (name, number, type, type_name, label[, oneof_index])."""
    message = file_proto.message_type.add(name=name)
    for field_name, number, field_type, type_name, label, *oneof in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            field.type_name = type_name
        if oneof:
            field.oneof_index = oneof[0]


def _messages() -> dict:
    optional, repeated = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tfrecsys/serving/tf_serving_protos.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    _declare(file_proto, "BatchingParameters", [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, int64_value, optional),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, int64_value, optional),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, int64_value, optional),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, int64_value, optional),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, string_value, optional),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, None, repeated),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None, optional),
    ])
    _declare(file_proto, "PrometheusConfig", [
        ("enable", 1, _F.TYPE_BOOL, None, optional),
        ("path", 2, _F.TYPE_STRING, None, optional),
    ])
    _declare(file_proto, "MonitoringConfig", [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", optional),
    ])
    _declare(file_proto, "SerializedExampleList", [("examples", 1, _F.TYPE_BYTES, None, repeated)])
    _declare(file_proto, "SerializedExampleListWithContext", [
        ("examples", 1, _F.TYPE_BYTES, None, repeated),
        ("context", 2, _F.TYPE_BYTES, None, optional),
    ])
    _declare(file_proto, "SerializedInput", [
        ("example_list", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.SerializedExampleList", optional, 0),
        ("example_list_with_context", 2, _F.TYPE_MESSAGE, ".tensorflow.serving.SerializedExampleListWithContext",
         optional, 0),
    ])
    file_proto.message_type[-1].oneof_decl.add(name="kind")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file_proto.SerializeToString())
    return {message.name: GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{message.name}"))
            for message in file_proto.message_type}


_MESSAGES = _messages()
BatchingParametersProto = _MESSAGES["BatchingParameters"]
MonitoringConfigProto = _MESSAGES["MonitoringConfig"]
SerializedInputProto = _MESSAGES["SerializedInput"]
