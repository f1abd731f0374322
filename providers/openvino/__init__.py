"""OpenVINOExecutionProvider over the openvino package (being written)."""
